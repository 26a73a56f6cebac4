"""LLM user simulator: a text-generation back end plays the user.

Default prompt: the one of the REFUEL paper's reference code (``setting_one/user_generator.py`` in
ZhaolinGao/REFUEL). The whole dialogue is written out as a transcript inside ONE user message::

    Below is a dialogue between the user and the assistant. Pretend you are the user in this
    conversation. What question would you ask next?

    ### user: ...

    ### assistant: ...

    ### Instructions:
    FIRST provide a justification of the question you want to ask.
    SECOND, on a new line, state only the question. Your response should use the format:
    Justification:
    Question:

and the user's next message is the text after the last ``Question:`` (the whole reply, stripped,
when the model does not follow the format), as in the reference code.

``format="swap"`` instead shows the conversation as chat messages with the roles swapped (the
simulated user's past messages become the model's own "assistant" turns) under a system prompt,
and takes the model's reply as the user's next message.

One :meth:`LLMUser.reply` call makes ONE batched back-end call for all dialogues. Each dialogue's
sampling seed is drawn from its own ``state.user_rng``, so a restored or branched state continues
exactly as the original would have (given a back end that honours seeds, or a
:class:`~refuel_env.cache.CachedBackend`). A back end that raises or times out propagates the
exception; the environment rolls the step back.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..registry import USERS
from ..types import Conversation, DialogueState, SamplingParams, UserTurn

PAPER_USER_PROMPT = ("Below is a dialogue between the user and the assistant. Pretend you are the user in this "
                     "conversation. What question would you ask next? \n\n")
PAPER_USER_INSTRUCTIONS = ("### Instructions: \nFIRST provide a justification of the question you want to ask. \n"
                           "SECOND, on a new line, state only the question. Your response should use the format: \n"
                           "Justification: \nQuestion: ")
SWAP_SYSTEM_PROMPT = ("Pretend you are the user in this conversation: you talk to an AI assistant. Write the user's "
                      "next message, a follow-up question, and nothing else.")
DEFAULT_PARAMS = SamplingParams(max_new_tokens=256, temperature=0.8, top_p=1.0)  # the paper's generate.py: T = 0.8


def paper_transcript(messages: Conversation, prompt: str = PAPER_USER_PROMPT,
                     instructions: str = PAPER_USER_INSTRUCTIONS) -> Conversation:
    """The reference code's ``get_prompt``: the dialogue as a transcript in one user message."""
    text = prompt + "".join(f"### {m['role']}: {m['content']}\n\n" for m in messages) + instructions
    return [{"role": "user", "content": text}]


def swapped(messages: Conversation, system: str = SWAP_SYSTEM_PROMPT) -> Conversation:
    """The dialogue with user and assistant swapped (the assistant's system messages are hidden)."""
    flip = {"user": "assistant", "assistant": "user"}
    return [{"role": "system", "content": system}] + [
        {"role": flip[m["role"]], "content": m["content"]} for m in messages if m["role"] in flip]


def parse_question(text: str) -> str:
    """The text after the last ``Question:`` (the reference code's parsing), else the whole text.

    A model that goes on writing the transcript (``"\n### assistant: ..."``) is cut there first.
    """
    text = text.split("\n###", 1)[0]
    parts = re.split(r"(?i)question\s*:", text)
    if len(parts) > 1:
        return parts[-1].strip()
    return re.sub(r"(?i)^\s*justification\s*:\s*", "", text).strip()


class LLMUser:
    """User simulator driven by a text-generation back end.

    Args:
        backend: a back end (``TransformersBackend``, ``OpenAIBackend``, ``CachedBackend``...), or a
            model name (``"smollm2"``...) built with ``backend_name``. ``None``: ask the task
            (``task.make_backend("user")``, e.g. the open-chat task's ``user_model``).
        prompt: the instruction shown before the transcript (``format="paper"``) or the system
            prompt (``format="swap"``). Default: the paper's.
        params: sampling parameters of the user's replies.
        format: ``"paper"`` (transcript + Justification/Question format) or ``"swap"`` (roles swapped).
        instructions: the instructions after the transcript (``format="paper"``).
        end_marker: if set (e.g. ``"[END]"``) and the model writes it, the user ends the dialogue;
            the marker is removed from the message. Mention it in ``prompt`` so the model knows.
        fallback: the message used when the parsed reply is empty.
    """

    replaces_memory = True  # it never touches a state's memory (see protocols.UserSimulator)

    name = "llm"

    def __init__(self, backend: Any = None, prompt: str | None = None, params: SamplingParams | None = None,
                 task: Any = None, format: str = "paper", instructions: str = PAPER_USER_INSTRUCTIONS,
                 end_marker: str | None = None, fallback: str = "Can you tell me more?",
                 backend_name: str = "transformers", backend_kwargs: dict | None = None):
        if format not in ("paper", "swap"):
            raise ValueError(f"format must be 'paper' or 'swap', got {format!r}")
        from ..backends import backend_for

        backend = backend_for(backend, task, "user", backend_name, backend_kwargs)
        if backend is None:
            raise ValueError("LLMUser needs a text-generation back end: pass user_kwargs={'backend': <back end or "
                             "model name, e.g. 'smollm2'>} to the env, or use a task that provides one (open-chat-v0)")
        if not hasattr(backend, "generate"):
            raise TypeError(f"backend {backend!r} has no generate(conversations, params, seeds) method")
        self.backend, self.task, self.format = backend, task, format
        self.prompt = prompt if prompt is not None else (PAPER_USER_PROMPT if format == "paper" else SWAP_SYSTEM_PROMPT)
        self.instructions = instructions
        self.params = params if params is not None else (getattr(task, "user_params", None) or DEFAULT_PARAMS)
        if not isinstance(self.params, SamplingParams):
            self.params = SamplingParams(**self.params)
        self.end_marker, self.fallback = end_marker, fallback

    def build_prompt(self, state: DialogueState) -> Conversation:
        """What the user-LLM sees for one dialogue."""
        if self.format == "paper":
            return paper_transcript(state.messages, self.prompt, self.instructions)
        return swapped(state.messages, self.prompt)

    def parse(self, text: str) -> tuple[str, bool]:
        """(the user's message, whether the user ends the dialogue)."""
        msg = parse_question(text) if self.format == "paper" else text.strip()
        end = False
        if self.end_marker and self.end_marker in msg:
            msg, end = msg.replace(self.end_marker, "").strip(), True
        return (msg or ("" if end else self.fallback)), end

    def reply(self, states: Sequence[DialogueState]) -> list[UserTurn]:
        if not states:
            return []
        prompts = [self.build_prompt(s) for s in states]
        seeds = [int(s.user_rng.integers(2**63 - 1)) for s in states]
        detailed = hasattr(self.backend, "generate_with_tokens")
        if detailed:
            gens = self.backend.generate_with_tokens(prompts, self.params, seeds)
            texts = [g.text for g in gens]
        else:
            gens, texts = None, self.backend.generate(prompts, self.params, seeds)
        if not isinstance(texts, list) or len(texts) != len(states):
            raise RuntimeError(f"back end {self.backend!r} returned {len(texts) if hasattr(texts, '__len__') else texts!r} "
                               f"completions for {len(states)} dialogues; it must return one per dialogue")
        out = []
        for i, text in enumerate(texts):
            msg, end = self.parse(text)
            cost = {"user_calls": 1}
            if gens is not None:
                cost["user_prompt_tokens"] = int(gens[i].prompt_tokens or 0)
                cost["user_completion_tokens"] = int(gens[i].completion_tokens or 0)
            out.append(UserTurn(msg, end=end, cost=cost))
        return out


@USERS.register("llm")
def _make_llm_user(task: Any = None, **kwargs: Any) -> LLMUser:
    return LLMUser(task=task, **kwargs)
