"""The offline default policy pi_0 for the built-in guess-item task.

A small Llama model built from a config (well under a few million parameters), with a byte-level BPE
tokenizer trained in-process on the task's language and a ChatML chat template, pre-trained by
supervised fine-tuning on dialogues of the scripted *demonstrator* (competent, not optimal: it asks
informative questions but guesses prematurely with probability ``epsilon`` on each question turn), so that reinforcement learning has room to improve.

Built once and cached on disk (``$REFUEL_ENV_CACHE`` or ``~/.cache/refuel_env``), keyed by the
task parameters and the build recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from refuel_env.core import DialogueMachine
from refuel_env.tasks.guess_item import (ASK, ATTRIBUTES, CATALOGUE, FINAL, NO, OPENING, POSSIBLE, RIGHT, TOO_MANY,
                                        UNCLEAR, WRONG, YES)
from refuel_env.tasks.guess_item_players import ScriptedQuestioner

from . import progress as progress_bars
from .policy import Policy

logger = logging.getLogger(__name__)

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
RECIPE_VERSION = 7


@dataclass
class ReferenceConfig:
    """How pi_0 is built. Every field enters the cache key."""

    n_items: int = 8
    max_turns: int = 4
    noise: float = 0.0
    tell_horizon: bool = False  # whether the task's opening states H (the env's task_kwargs say)
    vocab_size: int = 640
    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 4
    n_dialogues: int = 2000  # measured: 1000 left pi_0's last turn 0.04 below its demonstrator's, 2000 0.015
    epsilon: float = 0.5  # probability that the demonstrator guesses prematurely on a question turn (demo_epsilon)
    final_error: float = 0.0  # probability that its final guess is another animal than its best (demo_final_error)
    demo_phrasing: str = "fixed"  # the demonstrator's own wording ("fixed" or "varied"); the user's stays varied
    epochs: int = 20  # small batches, many steps: in-context copying only emerges after ~2000 steps
    lr: float = 2e-3
    batch_size: int = 8
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "recipe": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


SMALL = ReferenceConfig(n_items=4, max_turns=3, vocab_size=640, hidden_size=32, num_layers=2, num_heads=2,
                        n_dialogues=300, epochs=4, lr=1e-2, batch_size=16)
"""A small pi_0 (4 animals, H_max = 3, seconds to build) for tests and quick experiments; it ships with the package."""


def cache_dir() -> Path:
    return Path(os.environ.get("REFUEL_ENV_CACHE", Path.home() / ".cache" / "refuel_env"))


def task_corpus(items) -> list[str]:
    """Every phrase of the task's language, for training the tokenizer."""
    lines = [f"I am thinking of one of these animals: {', '.join(items)}. You have {h} turns: ask yes/no questions "
             f"about one attribute at a time, and guess on turn {h}." for h in range(1, 10)]
    lines += [f"{OPENING.format(items=', '.join(items))} {ASK}", ASK]
    lines += ["You have 1 turn: make your guess now.", UNCLEAR, TOO_MANY, FINAL, *YES, *NO]
    lines += [POSSIBLE.format(items=", ".join(items[i:] + items[:i])) for i in range(len(items))]
    for qs, _ in ATTRIBUTES.values():
        lines += qs
    for it in CATALOGUE:
        lines += [f"Is it a {it}?", f"My guess is {it}.", f"I think it is a {it}.", WRONG.format(item=it), RIGHT.format(item=it)]
    return lines * 4


def build_tokenizer(items, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(task_corpus(items), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   bos_token=None, unk_token=None, chat_template=CHATML)


def demonstrations(cfg: ReferenceConfig) -> list[list[dict]]:
    """Dialogues of the scripted demonstrator with the scripted user, horizons uniform in 1..H_max."""
    core = DialogueMachine(task_kwargs={"n_items": cfg.n_items, "noise": cfg.noise, "tell_horizon": cfg.tell_horizon},
                           max_turns=cfg.max_turns)
    demo = ScriptedQuestioner(core.task, "demonstrator", epsilon=cfg.epsilon, final_error=cfg.final_error,
                              seed=cfg.seed, phrasing=cfg.demo_phrasing)
    rng = np.random.default_rng(cfg.seed)
    states = [core.new_state(int(rng.integers(2**62))) for _ in range(cfg.n_dialogues)]
    live = list(states)
    while live:
        core.step(live, demo.act([s.messages for s in live]))
        live = [s for s in live if not s.done]
    return [s.messages for s in states]


def sft(policy: Policy, dialogues, epochs: int, lr: float, batch_size: int, seed: int, log=logger.debug,
        progress: bool | None = None) -> list[float]:
    """Supervised fine-tuning on every assistant turn (the same turn masks the RL losses use), with a progress
    bar over its steps (``progress``: see :mod:`agents.engine.progress`); each epoch's NLL goes to ``log``."""
    enc, _ = policy.chat.encode_dialogues(dialogues)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.model.parameters(), lr=lr, weight_decay=0.0)
    n = enc.input_ids.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    # one-cycle schedule; too few steps for a warm-up phase: constant learning rate
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1) if steps >= 20
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    policy.model.train()
    losses = []
    bar = progress_bars.bar(progress, total=steps, desc="building pi_0 (SFT)", unit="step", leave=False)
    for ep in range(epochs):
        perm, tot = torch.randperm(n, generator=g), 0.0
        for i in range(0, n, batch_size):
            b = enc.select(perm[i:i + batch_size])
            lp = policy.token_logprobs(b)
            m = b.turn_mask[:, 1:].float()
            loss = -(lp * m).sum() / m.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(b.input_ids)
            bar.update(1)
        losses.append(tot / n)
        bar.set_postfix(epoch=f"{ep + 1}/{epochs}", nll=f"{losses[-1]:.4f}")
        log(f"[pi_0] SFT epoch {ep + 1}/{epochs}: token NLL {losses[-1]:.4f}")
    bar.close()
    policy.model.eval()
    return losses


def build_reference(cfg: ReferenceConfig, log=logger.info, progress: bool | None = None) -> Policy:
    torch.manual_seed(cfg.seed)
    items = list(CATALOGUE)[: cfg.n_items]
    tok = build_tokenizer(items, cfg.vocab_size)
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.hidden_size * 2,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_heads, max_position_embeddings=1024, tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = LlamaForCausalLM(mcfg)
    policy = Policy(model, tok, name="pi_0")
    t0 = time.perf_counter()
    dialogues = demonstrations(cfg)
    log(f"[pi_0] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(dialogues)} demonstrations")
    sft(policy, dialogues, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, progress=progress)
    log(f"[pi_0] built in {time.perf_counter() - t0:.0f} s")
    return policy


def reference_policy(cfg: ReferenceConfig | None = None, cache: Path | str | None = None, log=logger.info,
                     **policy_kwargs) -> Policy:
    """pi_0 for the built-in task: loaded from the cache, or the checkpoint shipped with the package for this
    recipe (:mod:`agents.engine.shipped`), or built once and cached."""
    from .shipped import shipped_path

    cfg = cfg or ReferenceConfig()
    path = Path(cache or cache_dir()) / f"pi0-{cfg.key()}"
    if not (path / "config.json").exists() and shipped_path(cfg) is not None:
        path = shipped_path(cfg)
    elif not (path / "config.json").exists():
        log(f"[pi_0] not in the cache yet: building it once (minutes on a CPU), cached in {path}")
        policy = build_reference(cfg, log=log)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        policy.save(str(tmp))
        (tmp / "reference_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        try:
            os.replace(tmp, path)
        except OSError:  # another process cached it first
            pass
    return Policy.from_pretrained(str(path), **{"name": "pi_0", **policy_kwargs})


def untrained_policy(n_items: int = 8, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
                     vocab_size: int = 640) -> Policy:
    """A randomly initialised small policy with the task tokenizer (for tests and quick experiments)."""
    torch.manual_seed(seed)
    tok = build_tokenizer(list(CATALOGUE)[:n_items], vocab_size)
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                       num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=None)
    return Policy(LlamaForCausalLM(mcfg), tok, name="untrained")
