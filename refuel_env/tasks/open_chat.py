"""Open chat, the paper's setting: opening prompts from a prompt set, an LLM user, an LLM or reward-model judge.

Prompt sets (``prompts=``):

- ``"builtin"`` (default): 50 short, varied prompts shipped in ``refuel_env/data/open_chat_prompts.txt``
  (every fifth one held out for evaluation; ``holdout_every=2`` holds out every second). Works offline.
- ``"hh"``: Anthropic HH as the paper uses it (``trl-internal-testing/hh-rlhf-trl-style``, its train and
  test splits): dialogues whose messages alternate user/assistant, with at most 5 turns and an
  opening prompt of at most ``max_prompt_tokens`` tokens; the opening user message is the prompt.
- ``"ultrainteract"``: ``openbmb/UltraInteract_pair`` with the paper's filters (alternating roles,
  at most 5 turns, duplicates of the same user prompts dropped); 500 held out for evaluation.
- a path to a ``.txt`` file (one prompt per line) or ``.jsonl`` file (``{"prompt": ...}`` per line),
  or a list of strings (every ``holdout_every``-th held out, default every fifth).

The hub sets are downloaded with ``datasets.load_dataset`` (network or a datasets cache needed).
Token counts for the length filter use ``prompt_tokenizer`` when given (the paper used Llama-3's),
and four characters per token otherwise.

Models: the simulated user and the LLM judge run on ``user_model`` / ``judge_model`` (default
``"smollm2"``: SmolLM2-135M-Instruct, offline) through ``backend`` (``"transformers"``, ``"vllm"``
or ``"openai"``; ``backend_kwargs`` go to it, e.g. ``{"base_url": ...}``). When both roles use the
same model they share one back end. ``judge="reward-model"`` scores with ``reward_model`` (e.g. the
paper's ``"RLHFlow/ArmoRM-Llama3-8B-v0.1"`` with ``trust_remote_code=True``). ``cache=<path>`` wraps
the back ends in a record/replay :class:`~refuel_env.cache.CachedBackend`. Objects instead of names
work too: ``user_model=<back end>``.

Example::

    env = gym.make("RefuelChat-v0", task_kwargs={"user_model": "smollm2", "max_turns": 3})
    env = gym.make("RefuelDialogue-v0", task="open-chat-v0", user="llm", judge="llm",
                   user_kwargs={"backend": my_backend}, judge_kwargs={"backend": my_backend})

Because ``"scripted"`` and ``"rule"`` mean "the task's own user and judge", ``RefuelDialogue-v0``
with ``task="open-chat-v0"`` and no user/judge arguments also gets the LLM user and the default judge.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..registry import TASKS
from ..types import Conversation, SamplingParams
from ..validation import MAX_TURNS, as_int

BUILTIN_FILE = "open_chat_prompts.txt"
HH_DATASET = "trl-internal-testing/hh-rlhf-trl-style"
ULTRAINTERACT_DATASET = "openbmb/UltraInteract_pair"
PAPER_TASK_KWARGS = {
    "prompts": "ultrainteract", "max_turns": 5, "backend": "vllm",
    "user_model": "meta-llama/Meta-Llama-3.1-70B-Instruct", "user_params": {"max_new_tokens": 1024, "temperature": 0.8},
    "judge": "reward-model", "reward_model": "RLHFlow/ArmoRM-Llama3-8B-v0.1", "trust_remote_code": True,
}
"""The paper's open-chat configuration (user Llama-3.1-70B-Instruct on vLLM, ArmoRM judge, UltraInteract
prompts, H_max = 5): ``gym.make("RefuelChat-v0", task_kwargs=PAPER_TASK_KWARGS)``. Needs GPUs, the hub,
and the explicit ``trust_remote_code=True`` that ArmoRM's custom code requires. (The paper's policy,
Llama-3-8B-Instruct, is the agent's business.)"""
PAPER_MAX_TURNS = 5
PAPER_MAX_PROMPT_TOKENS = 128
ULTRAINTERACT_EVAL = 500


def load_builtin_prompts() -> list[str]:
    text = resources.files("refuel_env.data").joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def load_prompt_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found; prompts= takes 'builtin', 'hh', 'ultrainteract', "
                                "a .txt/.jsonl path, or a list of strings")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        out = []
        for i, ln in enumerate(lines):
            row = json.loads(ln)
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{i + 1}: each JSONL line must be an object with a string 'prompt'")
            out.append(row["prompt"].strip())
        return out
    return [ln.strip() for ln in lines if not ln.lstrip().startswith("#")]


def split_by_position(prompts: Sequence[str], every: int = 5) -> dict[str, list[str]]:
    """Every ``every``-th prompt (1-based) is held out for evaluation."""
    return {"train": [p for i, p in enumerate(prompts) if (i + 1) % every],
            "eval": [p for i, p in enumerate(prompts) if (i + 1) % every == 0]}


# ---------------------------------------------------------------------------------------- the paper's filters
def alternates(messages: Sequence[dict]) -> bool:
    """The reference code's ``check_order``: an even number of messages, user first, strictly alternating."""
    if len(messages) % 2:
        return False
    return all(m.get("role") == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(messages))


def _count_tokens(text: str, tokenizer: Any) -> int:
    if tokenizer is None:
        return (len(text) + 3) // 4
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def hh_openings(rows: Any, max_turns: int = PAPER_MAX_TURNS, max_prompt_tokens: int = PAPER_MAX_PROMPT_TOKENS,
                tokenizer: Any = None) -> list[str]:
    """Opening prompts of HH rows (``{"chosen": [messages]}``) that pass the paper's filters."""
    out = []
    for row in rows:
        msgs = row["chosen"]
        if not alternates(msgs) or len(msgs) > 2 * max_turns:
            continue
        if any(m["role"] == "user" and _count_tokens(m["content"], tokenizer) > max_prompt_tokens for m in msgs):
            continue
        out.append(msgs[0]["content"].strip())
    return out


def ultrainteract_openings(rows: Any, max_turns: int = PAPER_MAX_TURNS, tokenizer: Any = None,
                           max_prompt_tokens: int | None = None) -> list[str]:
    """Opening prompts of UltraInteract_pair rows with the paper's filters (format change, dedup, order, length)."""
    out, seen = [], set()
    for row in rows:
        traj = [{"role": m["from"], "content": m["value"]} for m in row["trajectory"]]
        traj.append({"role": "assistant", "content": row["chosen"]})
        key = tuple(m["content"] for m in traj if m["role"] == "user")
        if key in seen:
            continue
        seen.add(key)
        if not alternates(traj) or len(traj) > 2 * max_turns:
            continue
        if max_prompt_tokens is not None and _count_tokens(traj[0]["content"], tokenizer) > max_prompt_tokens:
            continue
        out.append(traj[0]["content"].strip())
    return out


def load_hub_prompts(name: str, max_turns: int = PAPER_MAX_TURNS, max_prompt_tokens: int = PAPER_MAX_PROMPT_TOKENS,
                     tokenizer: Any = None) -> dict[str, list[str]]:
    import datasets

    dataset = HH_DATASET if name == "hh" else ULTRAINTERACT_DATASET
    try:
        if name == "hh":
            return {"train": hh_openings(datasets.load_dataset(dataset, split="train"), max_turns, max_prompt_tokens, tokenizer),
                    "eval": hh_openings(datasets.load_dataset(dataset, split="test"), max_turns, max_prompt_tokens, tokenizer)}
        prompts = ultrainteract_openings(datasets.load_dataset(dataset, split="train"), max_turns, tokenizer)
    except Exception as e:  # network, hub, or cache errors
        raise RuntimeError(
            f"could not load the {name!r} prompts ({dataset}) from the Hugging Face hub: {type(e).__name__}: {e}. "
            "They need network access or a local datasets cache (set HF_HUB_OFFLINE=1 to fail fast offline). "
            "Offline, use prompts='builtin' (the prompt file shipped with refuel_env) or a path to your own "
            ".txt/.jsonl prompt file") from e
    order = np.random.default_rng(0).permutation(len(prompts))
    n_eval = min(ULTRAINTERACT_EVAL, len(prompts) // 5)
    return {"train": [prompts[i] for i in sorted(order[n_eval:])], "eval": [prompts[i] for i in sorted(order[:n_eval])]}


# ---------------------------------------------------------------------------------------- the task
class OpenChatTask:
    """Task family ``open-chat-v0`` (see the module docstring for the arguments)."""

    task_id = "open-chat-v0"

    def __init__(self, prompts: Any = "builtin", max_turns: int = PAPER_MAX_TURNS, system_prompt: str | None = None,
                 user_model: Any = "smollm2", judge_model: Any = None, backend: str = "transformers",
                 backend_kwargs: dict | None = None, user_params: dict | SamplingParams | None = None,
                 judge: str = "llm", reward_model: str | None = None, trust_remote_code: bool = False,
                 cache: str | Path | None = None, max_prompt_tokens: int = PAPER_MAX_PROMPT_TOKENS,
                 prompt_tokenizer: Any = None, holdout_every: int = 5):
        max_turns = as_int(max_turns, "max_turns", 1, MAX_TURNS)
        holdout_every = as_int(holdout_every, "holdout_every", 2, None, "every k-th prompt is held out, k >= 2")
        max_prompt_tokens = as_int(max_prompt_tokens, "max_prompt_tokens", 1, None)
        if judge not in ("llm", "reward-model"):
            raise ValueError(f"judge must be 'llm' or 'reward-model', got {judge!r}")
        if judge == "reward-model" and reward_model is None:
            raise ValueError("judge='reward-model' needs reward_model=<directory or hub id>, e.g. "
                             "'RLHFlow/ArmoRM-Llama3-8B-v0.1' with trust_remote_code=True")
        self.max_turns, self.system_prompt = int(max_turns), system_prompt
        self.user_model = user_model
        self.judge_model = judge_model if judge_model is not None else user_model
        self.backend, self.backend_kwargs = backend, dict(backend_kwargs or {})
        self.user_params = SamplingParams(**user_params) if isinstance(user_params, dict) else user_params
        self.judge_kind, self.reward_model, self.trust_remote_code = judge, reward_model, trust_remote_code
        self.cache = cache
        self.prompt_source = prompts if isinstance(prompts, str) else "list"
        if isinstance(prompts, str) and prompts in ("hh", "ultrainteract"):
            self.prompts = load_hub_prompts(prompts, max_turns, max_prompt_tokens, prompt_tokenizer)
        elif isinstance(prompts, str):
            self.prompts = split_by_position(load_builtin_prompts() if prompts == "builtin" else load_prompt_file(prompts),
                                             int(holdout_every))
        elif isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts):
            self.prompts = split_by_position(list(prompts), int(holdout_every))
        else:
            raise TypeError("prompts must be 'builtin', 'hh', 'ultrainteract', a .txt/.jsonl path, or a list of strings")
        for split, ps in self.prompts.items():
            if not ps:
                raise ValueError(f"the {split} split of the prompt set {self.prompt_source!r} is empty; give more prompts")
        self._backends: dict = {}

    # ----------------------------------------------------------------- episodes
    def new_episode(self, rng: np.random.Generator, horizon: int, split: str = "train") -> tuple[Conversation, Any, dict]:
        prompts = self.prompts[split]
        i = int(rng.integers(len(prompts)))
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages.append({"role": "user", "content": prompts[i]})
        return messages, f"{self.prompt_source}/{split}/{i}", {}

    def check_goal(self, goal: Any) -> str:
        """Any string is a goal here (the id of the opening prompt, or your own note); it is kept as a plain str."""
        if not isinstance(goal, str):
            raise TypeError(f"an open-chat goal is a str (e.g. 'builtin/train/3'), got {type(goal).__name__}")
        return str.__str__(goal)

    def check_memory(self, memory: dict) -> None:
        """Open chat keeps no task memory of its own; any dict is accepted."""

    def memory_from_prefix(self, messages: Conversation, goal: Any = None) -> dict:
        return {}

    # ----------------------------------------------------------------- components
    def make_backend(self, role: str) -> Any:
        """The back end of the simulated ``"user"`` or the ``"judge"`` (shared when both use one model)."""
        from ..backends import make_backend

        spec = self.user_model if role == "user" else self.judge_model
        key = spec if isinstance(spec, str) else id(spec)
        if key not in self._backends:
            b = make_backend(spec, backend=self.backend, shared=True, **self.backend_kwargs)
            if self.cache is not None:
                from ..cache import CachedBackend

                b = CachedBackend(b, self.cache)
            self._backends[key] = b
        return self._backends[key]

    def offline_speaker(self, seed: int | None = None):
        """Open chat ships no offline dialogues (only opening prompts), so it has no offline data."""
        raise ValueError("task open-chat-v0 has no offline dialogues for rollin='offline'; use rollin='reference' "
                         "(contexts rolled in by pi_0, the paper's LT-MIXED) or 'current'")

    def expert_speaker(self, seed: int | None = None):
        """Open chat has no scripted expert."""
        raise ValueError("task open-chat-v0 has no expert speaker: the benchmark's positive control and upper "
                         "reference need a task that has one (guess-item-v0)")

    def make_scripted_user(self, **kwargs: Any):
        """The task's own user: the LLM user (open chat has no scripted user)."""
        from ..users.llm_user import LLMUser

        return LLMUser(task=self, **kwargs)

    def make_rule_judge(self, **kwargs: Any):
        """The task's own judge: ``judge`` of the task (LLM judge, or the reward model)."""
        if self.judge_kind == "reward-model":
            from ..judges.reward_model import RewardModelJudge

            kwargs.setdefault("trust_remote_code", self.trust_remote_code)
            return RewardModelJudge(name_or_path=self.reward_model, task=self, **kwargs)
        from ..judges.llm_judge import LLMJudge

        return LLMJudge(task=self, **kwargs)


@TASKS.register("open-chat-v0")
def _make_open_chat(**kwargs: Any) -> OpenChatTask:
    return OpenChatTask(**kwargs)


def _register_gym() -> None:
    from gymnasium.envs.registration import register, registry

    if "RefuelChat-v0" not in registry:
        register(id="RefuelChat-v0", entry_point="refuel_env.env:RefuelDialogueEnv",
                 vector_entry_point="refuel_env.vector:RefuelVectorEnv",
                 kwargs={"task": "open-chat-v0", "max_message_chars": 4096, "max_total_chars": 32768})


_register_gym()
