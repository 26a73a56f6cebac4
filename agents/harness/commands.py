"""The ``refuel tune`` and ``refuel pi0 build`` commands (the others are in :mod:`agents.harness.cli`)."""

from __future__ import annotations

import logging
from pathlib import Path

from .config import ExperimentConfig

logger = logging.getLogger("agents.harness.cli")


def cmd_tune(args, cfg: ExperimentConfig) -> int:
    from .tune import run_tune

    out = Path(args.out)
    res = run_tune(cfg, out, progress=not args.no_progress, log=logger.info)
    print((out / "tuning.md").read_text())
    print(f"[tune] chosen settings: {out / 'tuned.json'} (use them with --set tuned=@{out / 'tuned.json'})")
    return 0 if res["chosen"] else 1


SHIPPED_PI0 = ("comparison", "comparison-control")
"""The presets whose pi_0 ships with the package (``quick``, ``default`` and ``full`` share comparison's)."""


def cmd_pi0(args, cfg=None) -> int:
    from ..engine.reference import SMALL
    from ..engine.shipped import SHIPPED, ship
    from .build import reference_config
    from .presets import preset

    recipes = [reference_config(preset(p).policy, preset(p).env) for p in (args.preset or SHIPPED_PI0)]
    if not args.preset:
        recipes.append(SMALL)
    for rc in recipes:
        ship(rc, Path(args.dest) if args.dest else SHIPPED, log=logger.info)
    return 0
