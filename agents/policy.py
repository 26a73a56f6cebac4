"""The policy: a Hugging Face causal LM with its tokenizer and chat template.

Two jobs: batched generation with seeds (ONE ``generate`` call for N dialogues), and summed
log-probabilities of exactly the tokens of one assistant turn.

The turn mask is the single truth for which tokens a loss sees. For a conversation and its k-th
assistant message, with P = template(messages before it, add_generation_prompt=True) and
F = template(messages up to and including it), the turn's tokens are F[len(P):]: what the chat
template renders for that assistant message, end-of-turn token included (and, as in TRL's
``DPOTrainer``, any separator the template puts after it). We check that P is a prefix of F
(prefix consistency) and raise :class:`TemplateError` when a template breaks it.

Log-probabilities are of the canonical tokenisation of the response text (what the model sees when
the dialogue goes on), not of the sampled ids; both pi_theta and pi_t are evaluated on the same ids.
Logits are divided by the sampling temperature, as in the REFUEL reference code, so that the
log-probabilities are those of the distribution that generated the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl.trainer.utils import selective_log_softmax

Conversation = list[dict]


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used to mask assistant turns."""


@dataclass
class EncodedTurns:
    """Right-padded token ids of N (context + assistant turn) sequences and their turn masks."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    turn_mask: torch.Tensor  # [N, T] 1 on the tokens of the trained turn(s)

    def to(self, device) -> "EncodedTurns":
        return EncodedTurns(self.input_ids.to(device), self.attention_mask.to(device), self.turn_mask.to(device))

    def select(self, idx) -> "EncodedTurns":
        ids, att, m = self.input_ids[idx], self.attention_mask[idx], self.turn_mask[idx]
        width = int(att.sum(1).max())
        return EncodedTurns(ids[:, :width], att[:, :width], m[:, :width])


class Policy:
    """A causal LM that can generate batches of assistant turns and score them.

    Args:
        model: any ``AutoModelForCausalLM``.
        tokenizer: its tokenizer, with a chat template.
        max_new_tokens: longest response generated.
        temperature: sampling temperature (also the temperature of the log-probabilities).
        name: a label for logs and reports.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, max_new_tokens: int = 32, temperature: float = 1.0,
                 name: str = "policy"):
        if getattr(tokenizer, "chat_template", None) is None:
            raise TemplateError(f"the tokenizer of {name!r} has no chat template; set tokenizer.chat_template "
                                "(e.g. copy one from an instruct model) before using it as a dialogue policy")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.stats = {"template_errors": 0}

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, **kwargs) -> "Policy":
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, use_safetensors=True)
        return cls(model, tok, name=kwargs.pop("name", str(path)), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- tokenisation
    def _template(self, messages: Conversation, add_generation_prompt: bool) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def turn_span(self, messages: Conversation, k: int) -> tuple[list[int], int, int]:
        """Token ids of messages[:k+1] and the [start, end) span of assistant message k within them."""
        if messages[k]["role"] != "assistant":
            raise ValueError(f"message {k} is a {messages[k]['role']!r} message, not an assistant turn")
        prefix = self._template(messages[:k], add_generation_prompt=True)
        full = self._template(messages[: k + 1], add_generation_prompt=False)
        if full[: len(prefix)] != prefix:
            self.stats["template_errors"] += 1
            raise TemplateError(
                "tokenising the dialogue prefix does not give a prefix of the tokens of the whole dialogue "
                f"(policy {self.name!r}, assistant message {k}): the chat template renders earlier turns differently "
                "once a later turn is added, so turn masks would be wrong. Use a prefix-consistent chat template.")
        if len(full) == len(prefix):
            raise TemplateError(f"assistant message {k} renders to no tokens")
        return full, len(prefix), len(full)

    def turn_row(self, context: Conversation, response: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpadded token ids of context + response, and the mask of the response turn."""
        msgs = list(context) + [{"role": "assistant", "content": response}]
        ids, a, b = self.turn_span(msgs, len(msgs) - 1)
        m = torch.zeros(len(ids), dtype=torch.long)
        m[a:b] = 1
        return torch.tensor(ids), m

    def pad_rows(self, rows: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> EncodedTurns:
        return self._pad([r[0] for r in rows], [r[1] for r in rows])

    def encode_turns(self, contexts: Sequence[Conversation], responses: Sequence[str]) -> EncodedTurns:
        """Encode (context, response) pairs: the mask covers the response turn only."""
        return self.pad_rows([self.turn_row(c, r) for c, r in zip(contexts, responses, strict=True)])

    def encode_dialogues(self, dialogues: Sequence[Conversation]) -> tuple[EncodedTurns, list[list[tuple[int, int]]]]:
        """Encode whole dialogues; the mask covers every assistant turn. Also returns each turn's span."""
        seqs, masks, spans = [], [], []
        for msgs in dialogues:
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            ids = self._template(list(msgs[: last + 1]), add_generation_prompt=False)
            m = torch.zeros(len(ids), dtype=torch.long)
            sp = []
            for k, msg in enumerate(msgs[: last + 1]):
                if msg["role"] == "assistant":
                    full, a, b = self.turn_span(list(msgs), k)
                    if ids[:b] != full:
                        self.stats["template_errors"] += 1
                        raise TemplateError(f"the tokens of dialogue turns 1..{k} are not a prefix of the whole dialogue's")
                    m[a:b] = 1
                    sp.append((a, b))
            seqs.append(torch.tensor(ids))
            masks.append(m)
            spans.append(sp)
        return self._pad(seqs, masks), spans

    def _pad(self, seqs, masks) -> EncodedTurns:
        ids = pad_sequence(seqs, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        att = pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True, padding_value=0)
        return EncodedTurns(ids, att, pad_sequence(masks, batch_first=True, padding_value=0))

    # ---------------------------------------------------------------- scoring
    def token_logprobs(self, enc: EncodedTurns, model=None, return_hidden: bool = False):
        """Per-token log-probabilities [N, T-1] of input_ids[:, 1:] (and the last hidden states if asked)."""
        enc = enc.to(self.device)
        model = model or self.model
        out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=return_hidden)
        logits = out.logits[:, :-1].float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        lp = selective_log_softmax(logits, enc.input_ids[:, 1:])
        return (lp, out.hidden_states[-1]) if return_hidden else lp

    def sequence_logprobs(self, enc: EncodedTurns, model=None) -> torch.Tensor:
        """Summed log-probabilities [N] of the masked turn tokens (differentiable)."""
        lp = self.token_logprobs(enc, model)
        return (lp * enc.turn_mask[:, 1:].to(lp.device)).sum(-1)

    @torch.no_grad()
    def sequence_logprobs_nograd(self, enc: EncodedTurns, batch_size: int = 64, model=None) -> torch.Tensor:
        out = []
        for i in range(0, enc.input_ids.shape[0], batch_size):
            out.append(self.sequence_logprobs(enc.select(slice(i, i + batch_size)), model).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    # ---------------------------------------------------------------- generation
    def backend(self):
        """The generation back end: ``refuel_env``'s batched ``TransformersBackend`` over this model
        (per-row seeded sampling, end-of-turn stopping, context checks)."""
        from refuel_env.backends.transformers_backend import TransformersBackend

        if getattr(self, "_backend", None) is None or self._backend.model is not self.model:
            self._backend = TransformersBackend(self.model, self.tokenizer)
        return self._backend

    def generate(self, conversations: Sequence[Conversation], seed: int | None = None, temperature: float | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
        """ONE batched ``generate`` call; row i is sampled with its own seed ``seed + i``, so the same
        seed gives the same responses. ``temperature=0`` is greedy decoding."""
        from refuel_env.types import SamplingParams

        if not conversations:
            self.last_generated_tokens = 0
            return []
        params = SamplingParams(max_new_tokens=int(max_new_tokens or self.max_new_tokens),
                                temperature=self.temperature if temperature is None else float(temperature))
        base = int(torch.randint(2**31 - 1, ()).item()) if seed is None else int(seed)
        gens = self.backend().generate_with_tokens([list(c) for c in conversations], params,
                                                   seeds=[(base + i) % (2**31 - 1) for i in range(len(conversations))])
        self.last_generated_tokens = sum(g.completion_tokens for g in gens)
        return [g.text.strip() for g in gens]

    def act(self, observations, seed: int | None = None, temperature: float | None = None) -> list[str]:
        """Answer a batch of observations (env observations or conversations)."""
        convs = [list(o["messages"]) if isinstance(o, dict) else list(o) for o in observations]
        return self.generate(convs, seed=seed, temperature=temperature)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str) -> None:
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    def clone(self, name: str | None = None) -> "Policy":
        import copy

        m = copy.deepcopy(self.model)
        m.requires_grad_(False)
        m.eval()
        return Policy(m, self.tokenizer, self.max_new_tokens, self.temperature, name or f"{self.name}-frozen")
