"""Presets: named starting points of an :class:`~agents.harness.config.ExperimentConfig`.

- ``comparison``: the benchmark that tests the paper's claim, on the built-in task's *planning* configuration
  (pi_0's losses are in its questions, not its last turn): every paper row, the controls, 5 seeds, the tuned
  settings of ``refuel tune`` (recorded in ``benchmarks/results/tuning/``). ``comparison-control``: the same on
  the *execution* configuration (pi_0's errors are at the last turn, where last-turn methods should do as well).
- ``quick``: a few rows on one seed in minutes on a 2-core CPU (``make bench``); ``default`` (3 seeds) and
  ``full`` (5 seeds, longer; for GPUs) run the same rows as the comparison.
- ``paper-ultrainteract``, ``paper-hh``: the REFUEL paper's setting on real models.
"""

from __future__ import annotations

from .config import EnvConfig, EvalConfig, ExperimentConfig, PolicyConfig, TuneConfig
from .rows import PAPER_ROWS

PLANNING_TASK = {"n_items": 8, "noise": 0.0, "demo_epsilon": 0.5, "demo_final_error": 0.0}
"""The guess-item configuration whose gap is planning: pi_0's demonstrator guesses before it is asked on half of its
question turns and never errs on the last turn."""
EXECUTION_TASK = {"n_items": 8, "noise": 0.0, "demo_epsilon": 0.0, "demo_final_error": 0.5}
"""The control configuration: the demonstrator plans perfectly and names a wrong animal on half of its last turns."""
COMPARISON_OPTIONS = {"lr": 1e-3, "epochs": 2, "minibatch_size": 16, "max_new_tokens": 24, "temperature": 1.0}
TUNED: dict = {
    "REFUEL": {"lr": 0.001, "eta": 0.5},
    "REBEL-LT-OFFLINE": {"lr": 0.0003, "eta": 0.5},
    "REBEL-LT-MIXED": {"lr": 0.0003, "eta": 0.5},
    "REBEL-MT": {"lr": 0.0003, "eta": 2.0},
    "DPO-LT-OFFLINE": {"lr": 0.0003, "beta": 0.1},
    "DPO-LT-MIXED": {"lr": 0.001, "beta": 0.1},
    "DPO-MT": {"lr": 0.0003, "beta": 0.1},
    "DPO-ONLINE": {"lr": 0.0003, "beta": 0.1},
    "PPO": {"lr": 0.001, "clip_range": 0.1}}
"""The settings ``refuel tune --preset comparison`` chose (benchmarks/results/tuning/: the grid's table, the chosen
settings, the command); every row had the same grid on tuning seeds 100 and 101 and eval seed 777."""


def _comparison(task: dict, name: str) -> ExperimentConfig:
    return ExperimentConfig(
        preset=name, env=EnvConfig(task_kwargs=dict(task), max_turns=4), agents=list(PAPER_ROWS),
        seeds=[0, 1, 2, 3, 4], iterations=16, pairs_per_iteration=32,
        eval=EvalConfig(n_dialogues=512, curve_every=4, curve_n_dialogues=128, examples=24, bootstrap=2000),
        tune=TuneConfig(lr=[3e-4, 1e-3], seeds=[100, 101], eval_seed=777, eval_dialogues=256),
        agent_options=dict(COMPARISON_OPTIONS), tuned=dict(TUNED), threads=2)

def _quick() -> ExperimentConfig:
    cfg = _comparison(PLANNING_TASK, "quick")
    cfg.agents = ["pi_0", "EXPERT", "POSITIVE-CONTROL", "NEGATIVE-CONTROL", "REFUEL", "REBEL-LT-MIXED", "REBEL-MT",
                  "DPO-LT-MIXED", "PPO"]
    cfg.__post_init__()
    cfg.seeds, cfg.iterations = [0], 10
    cfg.eval = EvalConfig(n_dialogues=256, curve_every=5, curve_n_dialogues=64, examples=8, bootstrap=1000)
    return cfg


def _default() -> ExperimentConfig:
    cfg = _comparison(PLANNING_TASK, "default")
    cfg.seeds = [0, 1, 2]
    return cfg


def _full() -> ExperimentConfig:
    cfg = _comparison(PLANNING_TASK, "full")
    cfg.iterations, cfg.pairs_per_iteration, cfg.threads = 60, 128, None
    cfg.eval = EvalConfig(n_dialogues=1024, curve_every=10, curve_n_dialogues=256, examples=24)
    return cfg


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
           "comparison": lambda: _comparison(PLANNING_TASK, "comparison"),
           "comparison-control": lambda: _comparison(EXECUTION_TASK, "comparison-control"),
           "paper-ultrainteract": lambda: _paper("ultrainteract"), "paper-hh": lambda: _paper("hh")}


def preset(name: str) -> ExperimentConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
