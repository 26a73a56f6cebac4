"""refuel-env: multi-turn dialogue as a reinforcement-learning environment.

``import refuel_env`` registers ``RefuelDialogue-v0`` (and its vector entry point) with Gymnasium.
"""

from gymnasium.envs.registration import register, registry as _gym_registry

from .core import DialogueMachine, EnvError, JudgeError, StepResult, UserSimulatorError, machine_of
from .env import RefuelDialogueEnv
from .registry import BACKENDS, JUDGES, TASKS, USERS
from .types import Conversation, DialogueState, JudgeScore, Message, SamplingParams, UserTurn
from .vector import RefuelVectorEnv

__version__ = "0.1.0"

if "RefuelDialogue-v0" not in _gym_registry:
    register(id="RefuelDialogue-v0", entry_point="refuel_env.env:RefuelDialogueEnv",
             vector_entry_point="refuel_env.vector:RefuelVectorEnv", disable_env_checker=False)

__all__ = ["RefuelDialogueEnv", "RefuelVectorEnv", "DialogueMachine", "machine_of", "StepResult", "DialogueState", "JudgeScore", "UserTurn",
           "SamplingParams", "Message", "Conversation", "EnvError", "JudgeError", "UserSimulatorError",
           "TASKS", "USERS", "JUDGES", "BACKENDS"]
