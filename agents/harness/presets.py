"""Presets: named starting points of an :class:`~agents.harness.config.ExperimentConfig`.

``quick`` (minutes on a 2-core CPU), ``default`` (3 seeds), ``full`` (5 seeds, longer), and the REFUEL
paper's setting on real models (``paper-ultrainteract``, ``paper-hh``).
"""

from __future__ import annotations

from .config import EnvConfig, EvalConfig, ExperimentConfig, PolicyConfig

def _quick() -> ExperimentConfig:
    # Sized by measurement on the 2-core CPU this was built on (see benchmarks/bench_memory.py): the library's
    # default pi_0 (built and cached on first use, ~3 min) + 5 trained rows + evaluation in well under 10 min.
    return ExperimentConfig(
        preset="quick", seeds=[0], iterations=10, pairs_per_iteration=32,
        eval=EvalConfig(n_dialogues=128, curve_every=2, curve_n_dialogues=64, examples=2, bootstrap=1000),
        agent_options={"lr": 3e-4, "epochs": 2, "minibatch_size": 16, "max_new_tokens": 24, "temperature": 1.0},
        threads=2)


def _default() -> ExperimentConfig:
    return ExperimentConfig(preset="default", seeds=[0, 1, 2], iterations=12, pairs_per_iteration=48,
                            eval=EvalConfig(n_dialogues=128, curve_every=2, curve_n_dialogues=64))


def _full() -> ExperimentConfig:
    return ExperimentConfig(preset="full", seeds=[0, 1, 2, 3, 4], iterations=60, pairs_per_iteration=128,
                            eval=EvalConfig(n_dialogues=512, curve_every=5, curve_n_dialogues=128, examples=5),
                            agent_options={"lr": 1e-4, "epochs": 2, "minibatch_size": 32, "max_new_tokens": 24,
                                           "temperature": 1.0})


PAPER_POLICY = "meta-llama/Meta-Llama-3-8B-Instruct"
PAPER_USER = "meta-llama/Meta-Llama-3.1-70B-Instruct"
PAPER_JUDGE = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
PAPER_PAIRS_PER_ITERATION = 60000
"""Pairs collected per iteration in the paper preset: the default ``total_episodes`` of the reference code's
training script (``setting_one/refuel.py`` in ZhaolinGao/REFUEL); the paper's text does not fix it where we
looked. Scale it with ``--pairs-per-iteration``."""
USER_BASE_URL_ENV = ("REFUEL_USER_BASE_URL", "OPENAI_BASE_URL")
"""Environment variables read (first set wins) for the base URL of the server of the paper preset's user
simulator; default ``http://127.0.0.1:8000/v1`` (``vllm serve`` on this machine)."""


def _paper(prompts: str = "ultrainteract") -> ExperimentConfig:
    """The REFUEL paper's setting (arXiv 2410.04612, setting one), on a prompt set (``"ultrainteract"``, ``"hh"``).

    Policy Llama-3-8B-Instruct, full fine-tuning in bf16; user simulator Llama-3.1-70B-Instruct with the
    paper's prompt, served by vLLM or any OpenAI-compatible server (``vllm serve
    meta-llama/Meta-Llama-3.1-70B-Instruct --tensor-parallel-size 4``; base URL from ``$REFUEL_USER_BASE_URL``
    or ``$OPENAI_BASE_URL``, API key from ``$OPENAI_API_KEY``); judge ArmoRM, whose custom code runs only with
    the user's own ``--set env.task_kwargs.trust_remote_code=true`` (the preset leaves it off: every run and dry
    run refuses it until then, saying so); H ~ U{1..5}; sampling temperature 0.8, responses up to
    1024 tokens (both sides); REFUEL with eta = 1 (the reference code's default), lr 3e-7, a gradient step
    per 128 pairs (the paper's batch size), one pass over each iteration's pairs, two iterations.

    Its optimiser: AdamW with betas (0.9, 0.95) and weight decay 1e-6, a cosine schedule with 10% warm-up
    within each iteration, and micro-batches of one pair with gradient accumulation (the reference code:
    1 pair per device x 32 accumulation steps x 4 GPUs = 128). Not reproduced: its DeepSpeed training with
    fp32 master weights (our multi-process training is plain DDP; parameter sharding is refused);
    ``refuel train --dry-run`` says what that means for memory. The length filter of the prompts counts 4 characters per token (the paper:
    Llama-3's tokenizer).
    """
    import os

    from refuel_env.tasks.open_chat import PAPER_TASK_KWARGS

    base_url = next((os.environ[k] for k in USER_BASE_URL_ENV if os.environ.get(k)), "http://127.0.0.1:8000/v1")
    # env.max_turns says max_turns; trust_remote_code is the user's own choice (--set ...=true), never a preset's
    task_kwargs = {k: v for k, v in PAPER_TASK_KWARGS.items() if k not in ("max_turns", "trust_remote_code")}
    task_kwargs.update(prompts=prompts, backend="openai", user_model=PAPER_USER, reward_model=PAPER_JUDGE,
                       judge="reward-model",
                       user_params={"max_new_tokens": 1024, "temperature": 0.8},
                       backend_kwargs={"base_url": base_url, "api_key_env": "OPENAI_API_KEY", "timeout": 600.0,
                                       "concurrency": 32})
    env = EnvConfig(task="open-chat-v0", task_kwargs=task_kwargs, max_turns=5, horizon="uniform", user="llm",
                    judge="rule", user_kwargs={"format": "paper"},
                    judge_kwargs={"device": "cuda", "batch_size": 8, "max_length": 4096},
                    max_message_chars=8192, max_total_chars=65536)
    policy = PolicyConfig(model=PAPER_POLICY, dtype="bfloat16", device="cuda", gradient_checkpointing=True,
                          generation_batch_size=16, score_batch_size=2)
    return ExperimentConfig(
        preset=f"paper-{prompts}", env=env, policy=policy, agents=["refuel"], seeds=[0], iterations=2,
        pairs_per_iteration=PAPER_PAIRS_PER_ITERATION,
        eval=EvalConfig(n_dialogues=500, seed=1234, temperature=None, curve_every=1, curve_n_dialogues=128,
                        examples=5, bootstrap=2000),
        agent_options={"lr": 3e-7, "epochs": 1, "minibatch_size": 128, "micro_batch_size": 1, "max_new_tokens": 1024,
                       "temperature": 0.8, "eta": 1.0, "weight_decay": 1e-6, "lr_schedule": "cosine",
                       "warmup_ratio": 0.1, "adam_betas": [0.9, 0.95]},
        checkpoint_every=1)


PRESETS = {"quick": _quick, "default": _default, "full": _full,
           "paper-ultrainteract": lambda: _paper("ultrainteract"), "paper-hh": lambda: _paper("hh")}


def preset(name: str) -> ExperimentConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
