"""vLLM back end: the offline engine (``vllm.LLM``), for fast generation on a CUDA machine.

vLLM is an optional dependency (``pip install 'refuel-env[vllm]'``); it is imported only when a
:class:`VLLMBackend` is built, never when ``refuel_env`` is imported. Each row is its own request
with its own ``SamplingParams(seed=...)``, so a row's sample depends on its seed, not on the batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..registry import BACKENDS
from ..types import Conversation, SamplingParams
from .base import (BackendBase, BackendError, Generation, check_conversations, check_count)

MISSING = ("the vLLM back end needs the vllm package, which runs on a CUDA GPU: pip install 'refuel-env[vllm]' "
           "(or pip install vllm) on a CUDA machine. Without a GPU use backend='transformers', or serve a model "
           "with any OpenAI-compatible server and use backend='openai'")


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(MISSING) from e
    return vllm


class VLLMBackend(BackendBase):
    """Generation with vLLM's offline engine.

    Args:
        model: a model name or directory, or an already built ``vllm.LLM``.
        trust_remote_code: passed to vLLM; only for a model you trust.
        chat_template_kwargs: extra keyword arguments for the chat template.
        engine_kwargs: other ``vllm.LLM`` arguments (``tensor_parallel_size``, ``gpu_memory_utilization``, ``dtype``...).
    """

    who = "vLLM"

    name = "vllm"

    def __init__(self, model: Any, trust_remote_code: bool = False, chat_template_kwargs: dict | None = None,
                 model_id: str | None = None, **engine_kwargs: Any):
        super().__init__()
        self._vllm = import_vllm()
        if isinstance(model, str):
            self.llm = self._vllm.LLM(model=model, trust_remote_code=trust_remote_code, **engine_kwargs)
            self.model_id = model_id or model
        else:
            self.llm = model
            self.model_id = model_id or str(getattr(getattr(model, "llm_engine", None), "model_config", "vllm"))
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def _params(self, params: SamplingParams, seed: int, **extra: Any):
        return self._vllm.SamplingParams(n=1, temperature=float(params.temperature), top_p=float(params.top_p),
                                         max_tokens=int(params.max_new_tokens), seed=int(seed) % (2**63),
                                         stop=list(params.stop) or None, **extra)

    def _generate(self, convs: list[Conversation], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        outs = self.llm.chat(convs, sampling_params=[self._params(params, s) for s in seeds], use_tqdm=False,
                             chat_template_kwargs=self.chat_template_kwargs or None)
        gens = []
        for o in outs:
            if len(o.outputs) != 1:
                raise BackendError(f"vLLM returned {len(o.outputs)} completions for one request; expected 1")
            c = o.outputs[0]
            reason = "length" if c.finish_reason == "length" else (
                "stop_string" if isinstance(getattr(c, "stop_reason", None), str) else "stop")
            gens.append(Generation(text=c.text, token_ids=list(c.token_ids), finish_reason=reason,
                                   prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(c.token_ids)))
        return gens

    def next_token_logprobs(self, conversations: Sequence[Conversation], candidates: Sequence[str]) -> np.ndarray:
        """Log-probability of each candidate's first token as the start of the reply (via prompt log-probs)."""
        convs = check_conversations(conversations)
        tok = self.llm.get_tokenizer()
        cand = [tok.encode(c, add_special_tokens=False)[:1] for c in candidates]
        if any(not c for c in cand) or len({c[0] for c in cand}) != len(cand):
            raise ValueError(f"candidates {list(candidates)} must be non-empty and start with different tokens")
        prompts = []
        for conv in convs:
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs)
            ids = tok.encode(text, add_special_tokens=False)
            prompts += [{"prompt_token_ids": ids + c} for c in cand]
        sp = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        check_count(outs, len(prompts), "vLLM")
        lp = np.array([o.prompt_logprobs[-1][o.prompt_token_ids[-1]].logprob for o in outs], dtype=float)
        return lp.reshape(len(convs), len(cand))


@BACKENDS.register("vllm")
def _make_vllm(model: Any = None, name_or_path: str | None = None, **kwargs: Any) -> VLLMBackend:
    kwargs.pop("task", None)
    import_vllm()  # the clear error first, before any argument checks
    if (model or name_or_path) is None:
        raise ValueError("the vLLM back end needs model=<hub id or directory> (or a vllm.LLM object)")
    return VLLMBackend(model if model is not None else name_or_path, **kwargs)
