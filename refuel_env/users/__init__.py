"""User simulators. Importing this package registers the built-in ones (``"llm"``); the scripted
user of each built-in task comes from the task itself (``user="scripted"``)."""

from . import llm_user  # noqa: F401  (registers "llm")
from .llm_user import PAPER_USER_PROMPT, LLMUser

__all__ = ["LLMUser", "PAPER_USER_PROMPT"]
