"""Judges. Importing this package registers the built-in ones (``"llm"``, ``"reward-model"``); the
rule judge of each built-in task comes from the task itself (``judge="rule"``)."""

from . import llm_judge, reward_model  # noqa: F401  (register "llm", "reward-model")
from .llm_judge import LLMJudge
from .reward_model import RewardModelJudge

__all__ = ["LLMJudge", "RewardModelJudge"]
