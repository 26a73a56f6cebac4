"""LoRA policies (peft): only the adapters train, pi_0 is the same model with its adapters off, checkpoints
hold the adapters (safetensors) and round-trip exactly, and ``refuel train``/``refuel eval`` take ``policy.lora``."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import pytest
import torch

import refuel_env  # noqa: F401

peft = pytest.importorskip("peft")  # in the dev extra; skipped only where peft is truly absent

from agents.base import make_agent  # noqa: E402
from agents.harness.cli import main  # noqa: E402
from agents.harness.hardware import model_arch  # noqa: E402
from agents.engine.policy import Policy  # noqa: E402
from agents.engine.reference import reference_policy  # noqa: E402

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture
def env(tiny_reference_config):
    c = tiny_reference_config
    return gym.make_vec("RefuelDialogue-v0", num_envs=1, task_kwargs={"n_items": c.n_items, "noise": c.noise},
                        max_turns=c.max_turns)


def fresh(cfg, lora=LORA, seed=0) -> Policy:
    p = reference_policy(cfg, log=lambda *a: None)
    return p.add_lora(lora, seed=seed) if lora is not None else p


def refuel_agent(policy: Policy, **kw):
    opts = {"batch_size": 16, "minibatch_size": 16, "epochs": 1, "lr": 1e-2, "max_new_tokens": 8, "seed": 0}
    return make_agent("refuel", policy=policy, ref_policy=policy.reference("pi_0"), **{**opts, **kw})


def test_only_adapters_train_and_an_update_changes_only_them(tiny_reference_config, env):
    cfg = tiny_reference_config
    policy, base = fresh(cfg), fresh(cfg, lora=None)
    trainable = policy.trainable_parameters()
    assert trainable and all("lora_" in n for n, _ in trainable)
    n_lora = sum(p.numel() for _, p in trainable)
    # the dry-run's adapter count (agents/plan.py) is what peft builds
    arch, _ = model_arch(None, cfg)
    assert n_lora == arch.lora_params(LORA["r"], "all-linear")
    agent = refuel_agent(policy)
    assert sum(p.numel() for g in agent.optimizer.param_groups for p in g["params"]) == n_lora

    before = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
    batch = agent.collect(env)
    returns = batch.data["returns"]
    assert len(batch) > 0 and bool((returns[:, 0] != returns[:, 1]).any())  # a learning signal exists
    enc = batch.data["enc"]
    assert torch.equal(policy.sequence_logprobs_nograd(enc), base.sequence_logprobs_nograd(enc))  # B starts at 0
    agent.update(batch)
    after = policy.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("lora_" in k for k in changed)
    assert all(torch.equal(before[k], after[k]) for k in before if "lora_" not in k)  # base weights untouched
    # pi_0 (adapters off) is still exactly the base model; the trained policy moved away from it
    assert torch.equal(agent.ref_policy.sequence_logprobs_nograd(enc), base.sequence_logprobs_nograd(enc))
    assert not torch.allclose(policy.sequence_logprobs_nograd(enc), base.sequence_logprobs_nograd(enc))
    # the view shares the model: the adapters are still trainable after using it
    assert all(p.requires_grad for _, p in trainable)
    # and pi_0 generates what the base model generates with the same seed
    convs = [c for c in batch.data["contexts"][:4]]
    assert agent.ref_policy.generate(convs, agent.sampling, seed=3) == base.generate(convs, agent.sampling, seed=3)


def test_checkpoint_round_trip_gives_identical_logprobs(tiny_reference_config, env, tmp_path):
    cfg = tiny_reference_config
    agent = refuel_agent(fresh(cfg))
    batch = agent.collect(env)
    agent.update(batch)
    enc = batch.data["enc"]
    want = agent.policy.sequence_logprobs_nograd(enc)
    agent.save(tmp_path / "ck")
    files = sorted(f.name for f in (tmp_path / "ck").iterdir())  # the model directory is the checkpoint's root
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files and "base_config.json" in files
    assert "config.json" not in files  # with it, transformers would take the directory for a whole model
    assert "model.safetensors" not in files and not any(f.endswith(".bin") for f in files)
    assert [f for f in files if f.endswith(".pt")] == ["agent_state.pt"]  # optimiser and random state only

    other = refuel_agent(fresh(cfg, seed=1))  # untrained adapters, other random A matrices
    assert not torch.allclose(other.policy.sequence_logprobs_nograd(enc), want)
    agent.iteration = 1  # as the trainer counts it
    agent.save(tmp_path / "ck")
    other.load(tmp_path / "ck")
    assert torch.equal(other.policy.sequence_logprobs_nograd(enc), want)
    assert other.iteration == agent.iteration == 1
    s1, s2 = agent.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    # the checkpoint alone: the base comes from the path the adapters name
    loaded = Policy.from_pretrained(tmp_path / "ck")
    assert loaded.is_lora and torch.equal(loaded.sequence_logprobs_nograd(enc), want)
    # and plain transformers (with peft installed) loads it as any adapter checkpoint: base from the adapters' config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = Policy(AutoModelForCausalLM.from_pretrained(tmp_path / "ck"), AutoTokenizer.from_pretrained(tmp_path / "ck"))
    torch.testing.assert_close(plain.sequence_logprobs_nograd(enc), want, rtol=0, atol=1e-5)

    # adapters do not load into a full policy, nor full weights into a LoRA policy: clear errors
    full = make_agent("refuel", policy=fresh(cfg, lora=None), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="LoRA adapters"):
        full.load(tmp_path / "ck")
    full.save(tmp_path / "full")
    with pytest.raises(ValueError, match="full model weights"):
        refuel_agent(fresh(cfg)).load(tmp_path / "full")
    with pytest.raises(ValueError, match="do not fit"):
        refuel_agent(fresh(cfg, lora={"r": 2})).load(tmp_path / "ck")


@pytest.mark.slow
def test_train_and_eval_commands_with_lora(tiny_reference_config, reference_cache, tmp_path, capsys):
    ref = {k: v for k, v in dataclasses.asdict(tiny_reference_config).items() if k not in ("n_items", "max_turns", "noise")}
    conf = {"seeds": [0], "iterations": 1, "pairs_per_iteration": 8,
            "policy": {"reference": ref, "cache": str(reference_cache), "lora": LORA},
            "eval": {"n_dialogues": 8, "seed": 5, "curve_every": 0, "curve_n_dialogues": 4, "examples": 0, "bootstrap": 100},
            "agent_options": {"max_new_tokens": 8, "epochs": 1, "minibatch_size": 8, "lr": 1e-2, "temperature": 1.0}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(conf))
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--agent", "refuel", "--out", str(run), "--no-progress"]) == 0
    final = run / "checkpoints" / "final"
    assert (final / "adapter_model.safetensors").exists()
    trained = json.loads((run / "eval.json").read_text())["eval"]
    assert main(["eval", "--config", str(path), "--checkpoint", str(final), "--out", str(tmp_path / "ev")]) == 0
    evaluated = json.loads((tmp_path / "ev" / "eval.json").read_text())["eval"]
    assert evaluated["win_rate"] == trained["win_rate"] and evaluated["score"] == trained["score"]
    assert "win rate vs pi_0" in capsys.readouterr().out
