"""``trust_remote_code``: only ever the user's explicit choice, and said out loud.

A model whose repository ships its own modelling code (``auto_map`` in its ``config.json``; the paper's judge
ArmoRM is one) loads only with ``trust_remote_code=True``, which runs that code in this process. No preset
turns it on. :func:`check_remote_code` (part of :func:`agents.harness.validate.check`, so of every run and
every dry run) refuses a configuration that loads such a model without the flag, saying which ``--set`` turns
it on and what that enables, and notes every place where the flag is on.
"""

from __future__ import annotations

from typing import Any

from .hardware import local_config

KNOWN = {"RLHFlow/ArmoRM-Llama3-8B-v0.1": "its reward head (a gating network over 19 reward objectives) is "
                                          "Python code in its hub repository"}
"""Models known to need remote code, with what that code is (the others are recognised by the ``auto_map`` of a
local or cached ``config.json``)."""


def needs_remote_code(model: Any) -> str | None:
    """Why ``model`` (a hub id or directory) needs ``trust_remote_code``, or None when it is not known to."""
    if not isinstance(model, str):
        return None
    if model in KNOWN:
        return KNOWN[model]
    cfg, where = local_config(model)
    if cfg and cfg.get("auto_map"):
        return f"its config ({where}) maps {', '.join(sorted(cfg['auto_map']))} to Python code in its repository"
    return None


def _sites(env: Any) -> list[tuple[str, str, Any, Any]]:
    """(what, flag key, model, flag value) of every model the env config loads by name with a trust flag."""
    tk, jk = env.task_kwargs, env.judge_kwargs
    sites = []
    own = env.judge == "rule" and tk.get("judge") == "reward-model"  # open chat's own judge: its reward_model
    named = jk.get("name_or_path") or jk.get("model")
    if own or env.judge == "reward-model":
        from_task = own or not named  # the task's reward_model, and the task's flag unless judge_kwargs set one
        model = tk.get("reward_model") if from_task else named
        if "trust_remote_code" in jk or not from_task:
            key, value = "env.judge_kwargs.trust_remote_code", jk.get("trust_remote_code", False)
        else:
            key, value = "env.task_kwargs.trust_remote_code", tk.get("trust_remote_code", False)
        sites.append(("the judge", key, model, value))
    bk = tk.get("backend_kwargs") or {}
    for what, model in (("the user simulator", tk.get("user_model")), ("the LLM judge", tk.get("judge_model"))):
        if model is not None and tk.get("backend") in ("vllm", "transformers"):
            sites.append((what, "env.task_kwargs.backend_kwargs.trust_remote_code", model, bk.get("trust_remote_code")))
    return sites


def check_remote_code(cfg: Any, problems: list[str], notes: list[str]) -> None:
    """Append to ``problems`` each model that needs remote code without the user's flag; to ``notes`` what
    each flag that is on enables."""
    seen = set()
    for what, key, model, trusted in _sites(cfg.env):
        if (key, model) in seen:
            continue
        seen.add((key, model))
        why = needs_remote_code(model)
        if trusted:
            notes.append(f"{key}=true (your choice): {what} {model!r} loads with trust_remote_code, so the Python code "
                         f"of its repository runs in this process with your permissions"
                         + (f" ({why})" if why else "; it is not known to need it: consider leaving it off"))
        elif why:
            problems.append(f"{what} {model!r} needs trust_remote_code: {why}. This library never turns it on by "
                            f"itself; if you trust that code, add --set {key}=true (or set it in your config file): "
                            "it lets that code run in this process with your permissions")
