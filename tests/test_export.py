"""The TRL export (``PairAgent.preference_dataset``): typed columns even when empty, ties counted, and a real
``trl.DPOTrainer`` step on an export."""

from __future__ import annotations

import copy
import logging
import math

import gymnasium as gym
import pytest
import torch

import refuel_env  # noqa: F401
from agents.algorithms.pairs import preference_features
from agents.base import Batch, make_agent
from agents.engine.reference import reference_policy

CTX = [{"role": "user", "content": "I am thinking of an animal. Ask me questions."}]


@pytest.fixture
def agent(tiny_reference_config):
    return make_agent("refuel", policy=reference_policy(tiny_reference_config, log=lambda *a: None), seed=3,
                      batch_size=16, max_new_tokens=8, epochs=1, minibatch_size=16)


def batch_of(returns):
    n = len(returns)
    return Batch({"contexts": [CTX] * n, "responses": [(f"Is it big {i}?", f"My guess is cat {i}.") for i in range(n)],
                  "returns": torch.tensor(returns, dtype=torch.float32)}, {"examples": n})


def test_an_all_ties_export_is_empty_typed_and_says_why(agent, caplog):
    from datasets import concatenate_datasets

    with caplog.at_level(logging.INFO, logger="agents"):
        empty = agent.preference_dataset(batch_of([[0.5, 0.5], [1.0, 1.0]]))
    assert len(empty) == 0 and empty.features == preference_features()
    assert "every one of the 2 pairs is a tie" in caplog.text and "2 ties" in empty.info.description
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agents"):
        some = agent.preference_dataset(batch_of([[0.0, 1.0], [1.0, 1.0], [0.7, 0.2]]))
    assert len(some) == 2 and some.features == preference_features() and "1 ties (equal returns) left out" in caplog.text
    row = some[0]
    assert row["chosen"] == [{"role": "assistant", "content": "My guess is cat 0."}] and row["score_chosen"] == 1.0
    assert row["prompt"] == CTX
    assert len(concatenate_datasets([empty, some])) == 2  # the same schema: exports of many iterations concatenate


def test_dpo_trainer_takes_a_step_on_an_export(agent, tmp_path):
    from trl import DPOConfig, DPOTrainer

    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=4)
    ds = agent.preference_dataset(agent.collect(env))
    assert len(ds) > 0, "no pair with a preference: the test proves nothing"
    model, ref = copy.deepcopy(agent.policy.model), copy.deepcopy(agent.ref_policy.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # a model built in memory: DPOTrainer cannot rebuild the reference from a hub id, so it is passed explicitly
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=min(4, len(ds)), max_steps=1,
                     learning_rate=1e-2, bf16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                     max_length=None, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=agent.policy.tokenizer)
    out = trainer.train()
    assert out.global_step == 1 and math.isfinite(out.training_loss)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the step changed nothing"


def test_an_export_ranks_each_pair_by_its_returns_and_counts_what_it_left_out(agent):
    some = agent.preference_dataset(batch_of([[0.9, 0.1], [0.3, 0.3], [0.2, 0.6]]))
    assert [r["chosen"][0]["content"] for r in some] == ["Is it big 0?", "My guess is cat 2."]
    assert [r["rejected"][0]["content"] for r in some] == ["My guess is cat 0.", "Is it big 2?"]
    assert [x for r in some for x in (r["score_chosen"], r["score_rejected"])] == pytest.approx([0.9, 0.1, 0.6, 0.2])
    assert some.info.description.startswith("2 preference pairs of 3 collected by 'refuel'; 1 ties")
    # a batch without pairs (collect found none): an empty export of the same schema
    none = agent.preference_dataset(Batch({"pairs": None}, {}))
    assert len(none) == 0 and none.features == preference_features()
    assert none.info.description.startswith("0 preference pairs of 0")
    # multi-turn responses (DPO-MT): the messages as they are
    turns = [{"role": "assistant", "content": "Is it big?"}, {"role": "user", "content": "Yes."},
             {"role": "assistant", "content": "My guess is whale."}]
    mt = agent.preference_dataset(Batch({"contexts": [CTX], "responses": [(turns, turns[:1])],
                                         "returns": torch.tensor([[1.0, 0.0]])}, {}))
    assert mt[0]["chosen"] == turns and mt[0]["rejected"] == turns[:1]
