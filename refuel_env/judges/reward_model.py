"""Reward-model judge: any ``AutoModelForSequenceClassification`` scores the dialogue so far.

This is how the paper uses ArmoRM (``RLHFlow/ArmoRM-Llama3-8B-v0.1``): the conversation up to the
latest assistant turn (a user message after it is left out, see
:func:`~refuel_env.judges.llm_judge.judged_messages`) goes through the reward model's chat template,
and its scalar output is the score. ArmoRM ships custom modelling code, so it needs ``trust_remote_code=True``, which is never
the default here: pass it explicitly for a model you trust (the paper's preset does).

Batched: one forward pass per ``batch_size`` chunk, left padding. A conversation longer than
``max_length`` tokens keeps its LAST ``max_length`` tokens (left truncation, so the latest turns
are scored; the paper's script truncates from the right at 4096); provenance says so and
``components["truncated"]`` flags it.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..registry import JUDGES
from ..types import DialogueState, JudgeScore
from .llm_judge import judged_messages


class RewardModelJudge:
    """Judge that scores with a sequence-classification reward model.

    Args:
        model / tokenizer: a loaded ``AutoModelForSequenceClassification`` and its tokenizer; or
        name_or_path: a directory or hub id to load them from (``trust_remote_code`` and ``dtype`` apply).
        max_length: the longest input in tokens (left truncation beyond it).
        batch_size: rows per forward pass (``None``: all at once).
        label: which output to use when the model has several labels (an index or a name in
            ``config.id2label``); a single-label model needs none. Models whose output has a
            ``score`` field (ArmoRM) use it.
        chat_template: a template to use when the tokenizer has none.
        compare_mode: ``"hard"`` (1 / 0.5 / 0 by the scores, as in win rates) or ``"bradley-terry"``
            (``sigmoid(r_a - r_b)``).
    """

    replaces_memory = True  # it never touches a state's memory (see protocols.UserSimulator)

    name = "reward-model"

    def __init__(self, model: Any = None, tokenizer: Any = None, name_or_path: str | None = None, task: Any = None,
                 max_length: int = 4096, batch_size: int | None = None, label: int | str | None = None,
                 device: Any = None, trust_remote_code: bool = False, dtype: Any = "auto",
                 chat_template: str | None = None, compare_mode: str = "hard", model_id: str | None = None):
        if compare_mode not in ("hard", "bradley-terry"):
            raise ValueError(f"compare_mode must be 'hard' or 'bradley-terry', got {compare_mode!r}")
        if model is None or isinstance(model, str):
            name_or_path = name_or_path or model
            if not name_or_path:
                raise ValueError("RewardModelJudge needs model=<AutoModelForSequenceClassification> and tokenizer=..., "
                                 "or name_or_path=<directory or hub id> (e.g. 'RLHFlow/ArmoRM-Llama3-8B-v0.1' with "
                                 "trust_remote_code=True)")
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    name_or_path, trust_remote_code=trust_remote_code, dtype=dtype)
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            except OSError as e:
                raise OSError(f"could not load reward model {name_or_path!r}: {e}. Pass a local directory, or a hub id "
                              "with network access and the hub cache") from e
            model_id = model_id or name_or_path
        elif tokenizer is None:
            raise ValueError("pass the reward model's tokenizer too: RewardModelJudge(model=m, tokenizer=t)")
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the reward model's tokenizer has no chat template; pass chat_template=<jinja template> "
                             "(e.g. refuel_env.models.CHATML_TEMPLATE)")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.model, self.tokenizer = model, tokenizer
        if device is not None:
            self.model.to(device)
        self.model.eval()
        self.max_length, self.batch_size, self.compare_mode = int(max_length), batch_size, compare_mode
        self.model_id = model_id or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the reward model's tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        self.pad_token_id = int(pad)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = self.pad_token_id  # sequence classifiers find the last token through the pad id
        self.label = self._label_index(label)
        self.stats = {"calls": 0, "rows": 0, "tokens": 0, "seconds": 0.0}

    def _label_index(self, label: int | str | None) -> int | None:
        n = int(getattr(self.model.config, "num_labels", 1))
        if label is None:
            return None  # a single logit, or the model's own ``score`` output (ArmoRM); checked at the first call
        if isinstance(label, str):
            lookup = {v: int(k) for k, v in getattr(self.model.config, "id2label", {}).items()}
            if label not in lookup:
                raise ValueError(f"label {label!r} not in the model's labels {sorted(lookup)}")
            return lookup[label]
        if not 0 <= int(label) < n:
            raise ValueError(f"label index {label} outside 0..{n - 1}")
        return int(label)

    def provenance(self) -> dict:
        return {"judge": "reward-model", "model": self.model_id, "truncation": "left", "max_length": self.max_length}

    def encode(self, states: Sequence[DialogueState]) -> tuple[list[list[int]], list[bool]]:
        rows, cut = [], []
        for s in states:
            text = self.tokenizer.apply_chat_template(judged_messages(s.messages), tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            cut.append(len(ids) > self.max_length)
            rows.append(list(ids[-self.max_length:]))
        return rows, cut

    def rewards(self, states: Sequence[DialogueState]) -> tuple[np.ndarray, list[bool]]:
        """The raw reward of each dialogue and whether it was truncated."""
        import torch

        rows, cut = self.encode(states)
        out = np.zeros(len(rows))
        if not rows:
            return out, cut
        t0 = time.perf_counter()
        device = next(self.model.parameters()).device
        bs = self.batch_size or len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for k in range(0, len(rows), bs):
            idx = order[k:k + bs]
            width = max(len(rows[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, width - len(rows[i]):] = torch.tensor(rows[i])
                mask[j, width - len(rows[i]):] = 1
            ids, mask = ids.to(device), mask.to(device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                try:
                    res = self.model(input_ids=ids, attention_mask=mask, position_ids=pos)
                except TypeError:
                    res = self.model(input_ids=ids, attention_mask=mask)
            score = getattr(res, "score", None)
            if score is not None:
                vals = score.reshape(len(idx), -1)[:, 0]
            else:
                logits = res.logits.reshape(len(idx), -1)
                if self.label is None and logits.shape[-1] != 1:
                    raise ValueError(f"the reward model has {logits.shape[-1]} outputs "
                                     f"({getattr(self.model.config, 'id2label', {})}); pass label=<index or name>")
                vals = logits[:, self.label or 0]
            out[idx] = vals.float().cpu().numpy()
        self.stats["calls"] += 1
        self.stats["rows"] += len(rows)
        self.stats["tokens"] += sum(len(r) for r in rows)
        self.stats["seconds"] += time.perf_counter() - t0
        if not np.all(np.isfinite(out)):
            bad = np.flatnonzero(~np.isfinite(out)).tolist()
            raise ValueError(f"the reward model {self.model_id} returned non-finite scores for dialogues {bad}; "
                             "check its weights and dtype (float16 on a CPU can overflow)")
        return out, cut

    def score(self, states: Sequence[DialogueState]) -> list[JudgeScore]:
        r, cut = self.rewards(states)
        prov = self.provenance()
        return [JudgeScore(float(v), components={"reward": float(v), "truncated": int(c)}, provenance=dict(prov),
                           cost={"judge_calls": 1}) for v, c in zip(r, cut)]

    def compare(self, states_a: Sequence[DialogueState], states_b: Sequence[DialogueState]) -> list[float]:
        if len(states_a) != len(states_b):
            raise ValueError(f"compare needs as many dialogues in a ({len(states_a)}) as in b ({len(states_b)})")
        r, _ = self.rewards(list(states_a) + list(states_b))
        a, b = r[: len(states_a)], r[len(states_a):]
        if self.compare_mode == "bradley-terry":
            return [float(x) for x in 1.0 / (1.0 + np.exp(b - a))]
        return [0.5 if x == y else float(x > y) for x, y in zip(a, b)]


@JUDGES.register("reward-model")
def _make_reward_model(task: Any = None, **kwargs: Any) -> RewardModelJudge:
    if "model" not in kwargs and "name_or_path" not in kwargs and task is not None and hasattr(task, "reward_model"):
        kwargs["name_or_path"] = task.reward_model
        kwargs.setdefault("trust_remote_code", getattr(task, "trust_remote_code", False))
    return RewardModelJudge(task=task, **kwargs)
