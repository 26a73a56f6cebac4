"""Chat encoding and turn masks: the single truth for which tokens a loss sees.

For a conversation and its k-th assistant message, with P = template(messages before it,
add_generation_prompt=True) and F = template(messages up to and including it), the turn's tokens are
F[len(P):]: what the chat template renders for that assistant message, end-of-turn token included (and,
as in TRL's ``DPOTrainer``, any separator the template puts after it). We check that P is a prefix of F
(prefix consistency) and raise :class:`TemplateError` when a template breaks it.

Log-probabilities are of the canonical tokenisation of the response text (what the model sees when the
dialogue goes on), not of the sampled ids; both pi_theta and pi_t are evaluated on the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from .distributed import cat_rows

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

    @staticmethod
    def cat(parts: Sequence["EncodedTurns"], pad_token_id: int) -> "EncodedTurns":
        """The rows of ``parts`` in order, right-padded to the widest."""
        return EncodedTurns(cat_rows([e.input_ids for e in parts], pad_token_id),
                            cat_rows([e.attention_mask for e in parts]), cat_rows([e.turn_mask for e in parts]))


class ChatEncoder:
    """Tokenises conversations with a tokenizer's chat template and masks assistant turns.

    ``stats["template_errors"]`` counts the turns a prefix-inconsistent template refused.
    """

    def __init__(self, tokenizer, name: str = "policy"):
        if getattr(tokenizer, "chat_template", None) is None:
            raise TemplateError(f"the tokenizer of {name!r} has no chat template; set tokenizer.chat_template "
                                "(e.g. copy one from an instruct model) before using it as a dialogue policy")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer, self.name = tokenizer, name
        self.stats = {"template_errors": 0}

    def template(self, messages: Conversation, add_generation_prompt: bool) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def turn_span(self, messages: Conversation, k: int) -> tuple[list[int], int, int]:
        """Token ids of messages[:k+1] and the [start, end) span of assistant message k within them."""
        if messages[k]["role"] != "assistant":
            raise ValueError(f"message {k} is a {messages[k]['role']!r} message, not an assistant turn")
        prefix = self.template(messages[:k], add_generation_prompt=True)
        full = self.template(messages[: k + 1], add_generation_prompt=False)
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

    def dialogue_row(self, context: Conversation, messages: Conversation) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpadded token ids of context + ``messages`` (up to their last assistant message), and the mask of every
        assistant turn in ``messages`` (a multi-turn response; the user turns between them are not trained)."""
        msgs = list(context) + list(messages)
        turns = [k for k in range(len(context), len(msgs)) if msgs[k]["role"] == "assistant"]
        if not turns:
            raise TemplateError("a multi-turn response needs at least one assistant message")
        ids, _, _ = self.turn_span(msgs, turns[-1])
        m = torch.zeros(len(ids), dtype=torch.long)
        for k in turns:
            full, a, b = self.turn_span(msgs, k)
            if ids[:b] != full:
                self.stats["template_errors"] += 1
                raise TemplateError(f"the tokens of messages 0..{k} are not a prefix of the whole dialogue's")
            m[a:b] = 1
        return torch.tensor(ids), m

    def pad_rows(self, rows: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> EncodedTurns:
        return self.pad([r[0] for r in rows], [r[1] for r in rows])

    def encode_turns(self, contexts: Sequence[Conversation], responses: Sequence[str]) -> EncodedTurns:
        """Encode (context, response) pairs: the mask covers the response turn only."""
        return self.pad_rows([self.turn_row(c, r) for c, r in zip(contexts, responses, strict=True)])

    def encode_dialogues(self, dialogues: Sequence[Conversation]) -> tuple[EncodedTurns, list[list[tuple[int, int]]]]:
        """Encode whole dialogues; the mask covers every assistant turn. Also returns each turn's span."""
        seqs, masks, spans = [], [], []
        for msgs in dialogues:
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            ids = self.template(list(msgs[: last + 1]), add_generation_prompt=False)
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
        return self.pad(seqs, masks), spans

    def pad(self, seqs, masks) -> EncodedTurns:
        ids = pad_sequence(seqs, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        att = pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True, padding_value=0)
        return EncodedTurns(ids, att, pad_sequence(masks, batch_first=True, padding_value=0))
