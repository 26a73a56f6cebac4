"""agents: REFUEL, REBEL, DPO and PPO on one rollout-and-update interface."""
