"""The built-in algorithms. Importing this package registers them (``make_agent("refuel")``, ...), once, here.

Read :mod:`agents.algorithms.pairs` first: the data every pair algorithm regresses on (the paper's
Algorithm 1), then the losses: :mod:`.refuel`, :mod:`.rebel`, :mod:`.dpo`; :mod:`.ppo` stands apart, and
:mod:`.sft` (behaviour cloning of a scripted expert) is the benchmark's positive control.
"""

from . import dpo, ppo, rebel, refuel, sft  # noqa: F401  (each module registers its agent)
