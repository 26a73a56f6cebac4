"""The hardware estimate of ``--dry-run``: arithmetic on parameter counts, not a measurement.

Parameter counts and shapes come from a local ``config.json`` (a model directory, or the Hugging Face cache,
read without network), else from :data:`KNOWN_MODELS` (a table of the paper's models in this file). How each
figure is estimated is printed with it (:data:`METHOD`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GiB = 1024 ** 3

@dataclass(frozen=True)
class Arch:
    """The shapes that memory depends on (Llama-style decoder: GQA attention, SwiGLU MLP, RMSNorm)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool = False
    lm_head: bool = True  # False for a reward model (a small score head instead)
    max_positions: int = 8192
    head_dim: int | None = None

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def params(self) -> int:
        h, hd = self.hidden, self.hd
        layer = h * self.heads * hd + 2 * h * self.kv_heads * hd + self.heads * hd * h + 3 * h * self.intermediate + 2 * h
        out = self.vocab * h + self.layers * layer + h
        if self.lm_head and not self.tied:
            out += self.vocab * h
        return out

    def kv_bytes_per_token(self, b: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.hd * b

    def lora_params(self, r: int, targets: Any) -> int:
        """Adapter parameters: r * (in + out) for every targeted linear layer of every decoder layer."""
        h, hd, i = self.hidden, self.hd, self.intermediate
        shapes = {"q_proj": (h, self.heads * hd), "k_proj": (h, self.kv_heads * hd), "v_proj": (h, self.kv_heads * hd),
                  "o_proj": (self.heads * hd, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        if targets in (None, "all-linear"):
            names = list(shapes)
        else:
            names = [t for t in ([targets] if isinstance(targets, str) else targets) if t in shapes]
        return self.layers * sum(r * (a + b) for a, b in (shapes[n] for n in names))


KNOWN_MODELS: dict[str, Arch] = {
    # from the models' config.json on the Hugging Face hub
    "meta-llama/Meta-Llama-3-8B-Instruct": Arch(128256, 4096, 32, 32, 8, 14336, max_positions=8192),
    "meta-llama/Meta-Llama-3.1-8B-Instruct": Arch(128256, 4096, 32, 32, 8, 14336, max_positions=131072),
    "meta-llama/Meta-Llama-3.1-70B-Instruct": Arch(128256, 8192, 80, 64, 8, 28672, max_positions=131072),
    # ArmoRM: the Llama-3-8B backbone without the LM head (its regression and gating heads add < 0.1%)
    "RLHFlow/ArmoRM-Llama3-8B-v0.1": Arch(128256, 4096, 32, 32, 8, 14336, lm_head=False, max_positions=8192),
    "SmolLM2-135M-Instruct": Arch(49152, 576, 30, 9, 3, 1536, tied=True, max_positions=8192),
}
"""Shapes of the paper's models (and the offline SmolLM2), used when no local config.json is found."""
ALIASES = {"meta-llama/Llama-3.1-70B-Instruct": "meta-llama/Meta-Llama-3.1-70B-Instruct",
           "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3.1-8B-Instruct",
           "smollm2": "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct": "SmolLM2-135M-Instruct"}


def arch_from_config(d: dict) -> Arch:
    d = d.get("text_config", d)
    return Arch(vocab=int(d["vocab_size"]), hidden=int(d["hidden_size"]), layers=int(d["num_hidden_layers"]),
                heads=int(d["num_attention_heads"]), kv_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
                intermediate=int(d.get("intermediate_size") or 4 * d["hidden_size"]),
                tied=bool(d.get("tie_word_embeddings", False)),
                lm_head="ForCausalLM" in " ".join(d.get("architectures") or ["ForCausalLM"]),
                max_positions=int(d.get("max_position_embeddings") or 2048), head_dim=d.get("head_dim"))


def local_config(name: str) -> tuple[dict | None, str]:
    """A model's config.json from a local directory or the Hugging Face cache (never the network)."""
    path = Path(name) / "config.json"
    if path.is_file():
        return json.loads(path.read_text()), f"{path}"
    if name.count("/") == 1 and not Path(name).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(name, "config.json")
        except (ImportError, ValueError, OSError):  # no huggingface_hub, a malformed repo id, ...
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return json.loads(Path(hit).read_text()), "the Hugging Face cache's config.json"
    return None, ""


def model_arch(name: str | None, builtin: Any = None) -> tuple[Arch | None, str]:
    """(shapes, where they came from) of a model name or directory; ``builtin``: the built-in pi_0's ReferenceConfig."""
    if name is None:
        if builtin is None:
            return None, "unknown"
        return (Arch(builtin.vocab_size, builtin.hidden_size, builtin.num_layers, builtin.num_heads, builtin.num_heads,
                     2 * builtin.hidden_size, tied=True, max_positions=1024), "the built-in pi_0's ReferenceConfig")
    d, where = local_config(name)
    if d is not None:
        try:
            return arch_from_config(d), where
        except (KeyError, TypeError, ValueError):
            pass
    key = ALIASES.get(name, name)
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key], "the table KNOWN_MODELS in agents/harness/hardware.py"
    return None, "unknown (no local config.json, not in agents/harness/hardware.py's table)"


DTYPES = {None: None, "auto": None, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2, "float32": 4,
          "fp32": 4, "float": 4}


def _gb(x: float) -> str:
    return f"{x / GiB:,.1f} GiB" if x >= GiB / 10 else f"{x / 1024 ** 2:,.1f} MiB"


def _count(x: float) -> str:
    return f"{x / 1e9:.3g}B" if x >= 1e9 else f"{x / 1e6:.3g}M"


def token_budget(cfg: Any) -> dict:
    """Token limits of one dialogue: opening prompt, responses, user replies, and the longest sequence."""
    tk, env = cfg.env.task_kwargs, cfg.env
    resp = int(cfg.agent_options.get("max_new_tokens", 24))
    user = int((tk.get("user_params") or {}).get("max_new_tokens", 256)) if env.task != "guess-item-v0" else 32
    prompt = int(tk.get("max_prompt_tokens", 128)) if env.task != "guess-item-v0" else 64
    hmax = int(env.max_turns)
    longest = prompt + (hmax - 1) * (resp + user) + resp + 8 * (2 * hmax)  # + chat-template tokens per message
    return {"response": resp, "user": user, "prompt": prompt, "longest_dialogue": longest,
            "user_prompt": longest - resp + 100 + user}  # the transcript the user model reads, + its instructions


METHOD = (
    "How these are estimated (arithmetic, not measured): parameter counts P from the shapes above. "
    "Weights P x b (b = 2 bytes in bf16, 4 in fp32). Full fine-tuning with torch's AdamW: gradients P x b and two "
    "moment buffers 2 P x b (they take the parameters' dtype). LoRA: adapters (r x (in + out) per targeted layer) "
    "in fp32 (peft casts them up), 16 bytes per adapter parameter with gradients and AdamW; pi_0 is the same "
    "weights with the adapters off (0 extra). Activations kept for the backward pass, per token and decoder layer: "
    "(4h + 2 kv_heads*head_dim + 4i) x b + 8h bytes (attention by SDPA, RMSNorm inputs in fp32); with gradient "
    "checkpointing, h x b per layer plus one layer's working set. Logits: 10 V bytes per token (the bf16 logits, "
    "their fp32 copy and the temperature-scaled copy). KV cache: 2 x layers x kv_heads x head_dim x b per token. "
    "vLLM: weights / TP + KV cache + ~3 GiB runtime per GPU within gpu_memory_utilization 0.9. Lengths: every "
    "message at its token limit (upper bounds).")


MICRO_BATCH_KEYS = ("micro_batch_size",)
"""Agent options that cap the pairs of one forward/backward pass (gradient accumulation), if an agent has them."""


def hardware_text(cfg: Any, gpu_gib: float = 80.0) -> list[str]:
    pol, env, tk = cfg.policy, cfg.env, cfg.env.task_kwargs
    from .build import reference_config

    builtin = reference_config(pol, env) if pol.model is None and env.task == "guess-item-v0" else None
    arch, src = model_arch(pol.model, builtin)
    t = token_budget(cfg)
    lines = [f"Hardware (estimates, {gpu_gib:.0f} GiB GPUs assumed):"]
    if arch is None:
        lines.append(f"  policy {pol.model!r}: shapes {src}; no memory estimate")
    else:
        lines += policy_memory(cfg, arch, src, t, gpu_gib)
    user_model = tk.get("user_model")
    if env.task != "guess-item-v0" and isinstance(user_model, str):
        lines += user_memory(cfg, user_model, t, gpu_gib)
    if tk.get("judge") == "reward-model" and tk.get("reward_model"):
        lines += judge_memory(cfg, tk["reward_model"], gpu_gib)
    lines.append("  " + METHOD)
    return lines


def policy_memory(cfg: Any, arch: Arch, src: str, t: dict, gpu_gib: float) -> list[str]:
    pol = cfg.policy
    stored_fp32 = pol.model is None or ALIASES.get(pol.model, pol.model) == "SmolLM2-135M-Instruct"
    b = DTYPES.get(pol.dtype) or (4 if stored_fp32 else 2)  # as stored: the built-in pi_0 and SmolLM2 copy are fp32
    P = arch.params
    seq = min(t["longest_dialogue"], arch.max_positions)
    mb = int(cfg.agent_options.get("minibatch_size", 32))
    # a micro-batch option (gradient accumulation), if the agents have one, bounds what one pass holds
    mb = int(next((cfg.agent_options[k] for k in MICRO_BATCH_KEYS if cfg.agent_options.get(k)), mb))
    lr = cfg.agent_options.get("lr")
    lines = [(f"  policy {pol.model or 'built-in pi_0'}: {_count(P)} parameters (shapes from {src}), "
              f"{'bf16/fp16' if b == 2 else 'fp32'} weights {_gb(P * b)}")]
    if t["longest_dialogue"] > arch.max_positions:
        lines.append(f"    ! the longest possible dialogue ({t['longest_dialogue']:,} tokens: prompt {t['prompt']}, "
                     f"{cfg.env.max_turns} responses of {t['response']}, user replies of {t['user']}) exceeds the model's "
                     f"{arch.max_positions:,}-token context (the estimates below use {arch.max_positions:,}); dialogues "
                     "that long fail at generation")
    if pol.lora not in (None, False):
        from ..engine.lora import lora_options

        lo = lora_options(pol.lora)
        L = arch.lora_params(int(lo["r"]), lo["target_modules"])
        train_state = 16 * L
        ref = 0
        lines.append(f"    LoRA r={lo['r']} on {lo['target_modules']}: {L / 1e6:.1f}M trainable parameters "
                     f"({100 * L / P:.2f}%): adapters + gradients + AdamW {_gb(train_state)}; pi_0 = adapters off: +0")
    else:
        train_state = 3 * P * b  # gradients + two AdamW moments
        ref = P * b
        lines.append(f"    full fine-tuning: gradients {_gb(P * b)} + AdamW moments {_gb(2 * P * b)}; "
                     f"pi_0 (a separate frozen copy) {_gb(ref)}")
        if b == 2 and isinstance(lr, (int, float)) and lr < 0.01 * 2 ** -8:
            lines.append(f"    ! lr {lr:g} in 16-bit weights with plain AdamW: a step (~lr) is far below bf16's resolution "
                         f"near typical weights (~0.01 x 2^-8 = {0.01 * 2 ** -8:.1e}), so most updates round away. The paper "
                         f"kept fp32 master weights (DeepSpeed). Use policy.dtype=float32 (weights + AdamW: "
                         f"{_gb(16 * P)}, sharded over GPUs) or LoRA (policy.lora: the adapters train in fp32)")
    per_layer = (4 * arch.hidden + 2 * arch.kv_heads * arch.hd + 4 * arch.intermediate) * b + 8 * arch.hidden
    if pol.gradient_checkpointing:
        act_tok = arch.layers * arch.hidden * b + per_layer
    else:
        act_tok = arch.layers * per_layer
    logit_tok = 10 * arch.vocab
    step_tokens = 2 * mb * seq
    act = step_tokens * (act_tok + logit_tok)
    per_pair = 2 * seq * (act_tok + logit_tok)
    lines.append(f"    training pass: {2 * mb} sequences x {seq:,} tokens in one forward/backward pass "
                 f"(gradient checkpointing {'on' if pol.gradient_checkpointing else 'off'}): activations "
                 f"{(act_tok) / 1024 ** 2:.2f} MiB + logits {logit_tok / 1024 ** 2:.2f} MiB per token = {_gb(act)} "
                 f"({_gb(per_pair)} per pair)")
    kv = arch.kv_bytes_per_token(b)
    gen_rows = pol.generation_batch_size or cfg.pairs_per_iteration * 2
    gen = gen_rows * seq * kv
    score_rows = int(pol.score_batch_size)
    score = score_rows * seq * logit_tok
    optim = train_state - (P * b if pol.lora in (None, False) else 0)  # the AdamW moments stay between updates
    peak_train = P * b + ref + train_state + act
    peak_collect = P * b + ref + optim + max(gen, score)
    lines.append(f"    collection: generate {gen_rows} rows x {seq:,} tokens: KV cache {_gb(gen)} "
                 f"({kv / 1024:.0f} KiB per token); log-probs (no gradient) of {score_rows} sequences per pass: "
                 f"logits {_gb(score)}")
    fit = max(peak_train, peak_collect)
    lines.append(f"    peak on the policy's device ({pol.device or 'cpu'}): training {_gb(peak_train)}, collection "
                 f"{_gb(peak_collect)} -> {'fits' if fit <= gpu_gib * GiB else 'does NOT fit'} in {gpu_gib:.0f} GiB")
    if act > gpu_gib * GiB:
        lines.append(f"    ! the activations of {mb} pairs in one pass do not fit: lower agent_options.micro_batch_size "
                     "(gradient accumulation; the paper: micro-batches of one pair, 32 accumulation steps x 4 GPUs) and "
                     "keep gradient checkpointing on")
    if score > gpu_gib * GiB:
        lines.append(f"    ! scoring {score_rows} sequences per pass does not fit: lower policy.score_batch_size")
    return lines


def user_memory(cfg: Any, user_model: str, t: dict, gpu_gib: float) -> list[str]:
    tk = cfg.env.task_kwargs
    arch, src = model_arch(user_model)
    backend = tk.get("backend", "transformers")
    if arch is None:
        return [f"  user simulator {user_model} via {backend}: shapes {src}; no estimate"]
    P, kv = arch.params, arch.kv_bytes_per_token(2)
    ctx = t["user_prompt"]
    conc = int((tk.get("backend_kwargs") or {}).get("concurrency", 8)) if backend == "openai" else None
    lines = [(f"  user simulator {user_model} via {backend}: {_count(P)} parameters (shapes from {src}), bf16 "
              f"weights {_gb(2 * P)}; KV cache {kv / 1024:.0f} KiB per token, a full request ~{ctx:,} tokens "
              f"(the transcript + {t['user']} new) = {_gb(ctx * kv)}")]
    want = (conc or 1) * ctx * kv
    lines.append(f"    vLLM tensor parallelism (weights / TP + ~3 GiB runtime per GPU, KV cache in the rest of "
                 f"0.9 x {gpu_gib:.0f} GiB); requests in flight: {conc if conc else 'as vLLM schedules'}:")
    best = None
    for tp in (1, 2, 4, 8):
        if arch.heads % tp:  # vLLM splits the attention heads evenly
            continue
        room = tp * (0.9 * gpu_gib * GiB - 2 * P / tp - 3 * GiB)
        ok = room >= want
        lines.append(f"      TP={tp}: weights {_gb(2 * P / tp)} per GPU, KV room {_gb(max(room, 0))} = "
                     f"{max(room, 0) / (ctx * kv):,.0f} full requests -> {'enough' if ok else 'not enough'}")
        if ok and best is None:
            best = tp
    if best is not None:
        lines.append(f"    -> serve it with `vllm serve {user_model} --tensor-parallel-size {best}` ({best} GPU(s), "
                     "besides the policy's)")
    return lines


def judge_memory(cfg: Any, name: str, gpu_gib: float) -> list[str]:
    jk = cfg.env.judge_kwargs
    arch, src = model_arch(name)
    if arch is None:
        return [f"  judge {name}: shapes {src}; no estimate"]
    bs = jk.get("batch_size") or 0
    length = int(jk.get("max_length", 4096))
    work = (bs or 1) * length * (4 * arch.hidden + 2 * arch.intermediate) * 2
    where = jk.get("device") or "cpu"
    return [f"  judge {name}: {_count(arch.params)} parameters (shapes from {src}), bf16 weights "
            f"{_gb(2 * arch.params)} + a forward pass of {bs or 'all'} x {length} tokens ~{_gb(work)}; on {where}"
            + (" (the policy's device too: add it there)" if where == (cfg.policy.device or "cpu") else "")]


