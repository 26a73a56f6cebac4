"""Data files shipped with refuel_env (prompt sets)."""
