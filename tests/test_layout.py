"""The layering of the code: each layer imports only the layers below it, and no module is over 400 lines.

    refuel_env  <-  agents.engine  <-  agents.base  <-  agents.algorithms  <-  agents.harness

(``agents.base`` may import ``agents.algorithms`` inside ``agent_registry()``: that is how the built-in agents
register, once, in one place.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def modules(package: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, top_level_only: bool = False, root: Path = ROOT) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
            else:
                out.add(node.module)
    return out


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def offenders(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    bad = []
    for path in modules(package, root):
        for mod in sorted(imports(path, root=root)):
            if any(under(mod, f) for f in forbidden):
                bad.append(f"{path.relative_to(root)} imports {mod}")
    return bad


def test_the_environment_never_imports_the_agents():
    assert offenders("refuel_env", ("agents",)) == []


def test_the_engine_imports_neither_the_interface_nor_the_algorithms_nor_the_harness():
    assert offenders("agents/engine", ("agents.base", "agents.algorithms", "agents.harness")) == []


def test_algorithms_never_import_the_experiment_harness():
    assert offenders("agents/algorithms", ("agents.harness",)) == []


def test_the_interface_imports_the_algorithms_only_to_register_them_and_never_the_harness():
    base = ROOT / "agents" / "base.py"
    assert not any(under(m, "agents.harness") for m in imports(base))
    assert not any(under(m, "agents.algorithms") for m in imports(base, top_level_only=True))


@pytest.mark.parametrize("package", ["refuel_env", "agents"])
def test_no_module_over_400_lines(package):
    big = {str(p.relative_to(ROOT)): n for p in modules(package) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines (split each into modules with one job): {big}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The layering check can fail: a planted relative import of the harness is found."""
    pkg = tmp_path / "agents" / "algorithms"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("from ..harness.config import ExperimentConfig\n")
    assert offenders("agents/algorithms", ("agents.harness",), root=tmp_path) == [
        "agents/algorithms/bad.py imports agents.harness.config",
        "agents/algorithms/bad.py imports agents.harness.config.ExperimentConfig"]
