"""Device placement: every agent's loss, and one update step's forward, backward and optimiser step, with the
model on a non-CPU device.

A GPU is rarely at hand, so the model lives on PyTorch's ``meta`` device: every operation runs (shapes only),
and a tensor built on the CPU by mistake (an index, a mask) meets a meta tensor and raises, as it would meet
a CUDA tensor. The stand-in model is a tiny embedding + linear layer (Hugging Face models check their padding
masks on the host, which the meta device cannot do); what is tested is the agents' code around it.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from agents import make_agent
from agents.algorithms.dpo import dpo_loss
from agents.algorithms.ppo import gae, kl_rewards, policy_loss, value_loss
from agents.algorithms.refuel import refuel_loss
from agents.engine.policy import Policy
from agents.engine.reference import build_tokenizer
from refuel_env.tasks.guess_item import CATALOGUE

META = torch.device("meta")
CTX = [{"role": "user", "content": "I am thinking of one of these animals: whale, horse, otter, cat."}]


class TinyLM(torch.nn.Module):
    """What the policy needs of a causal LM: ``model(input_ids, attention_mask) -> .logits, .hidden_states``."""

    def __init__(self, vocab: int, hidden: int = 8):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=hidden)
        self.emb, self.head = torch.nn.Embedding(vocab, hidden), torch.nn.Linear(hidden, vocab)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **kwargs):
        h = self.emb(input_ids)
        return types.SimpleNamespace(logits=self.head(h), hidden_states=(h,) if output_hidden_states else None)


class TinyDecoder(torch.nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, hidden)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return types.SimpleNamespace(last_hidden_state=self.emb(input_ids))


class TinyCausalLM(torch.nn.Module):
    """What memory-safe scoring uses (:mod:`agents.engine.scoring`): a decoder, an output layer and
    ``logits_to_keep``, as a Hugging Face causal LM has them."""

    def __init__(self, vocab: int, hidden: int = 8):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=hidden)
        self.model, self.lm_head = TinyDecoder(vocab, hidden), torch.nn.Linear(hidden, vocab, bias=False)

    def get_decoder(self):
        return self.model

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, use_cache=None, logits_to_keep=0, **kwargs):
        assert use_cache is False and isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.numel() == 0
        h = self.model(input_ids, attention_mask).last_hidden_state
        return types.SimpleNamespace(logits=self.lm_head(h[:, logits_to_keep]))


LMS = [TinyLM, TinyCausalLM]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(list(CATALOGUE)[:8], 640)


def meta_agent(name: str, tokenizer, lm=TinyLM, **options):
    policy = Policy(lm(len(tokenizer)).to(META), tokenizer, name="policy")
    ref = Policy(lm(len(tokenizer)).to(META).requires_grad_(False), tokenizer, name="pi_0")
    return make_agent(name, policy=policy, ref_policy=ref, batch_size=2, minibatch_size=2, **options)


def step(agent, losses) -> None:
    """Backward through every micro-batch loss, then one optimiser step, all on the meta device."""
    agent.optimizer.zero_grad()
    for loss, _, info in losses:
        assert loss.device == META and all(v.device == META for v in info.values() if torch.is_tensor(v))
        loss.backward()
    assert all(p.grad is not None and p.grad.device == META for p in agent.parameters())
    agent.optimizer.step()


@pytest.mark.parametrize("name,options", [("refuel", {}), ("rebel", {}), ("dpo", {}),
                                          ("dpo", {"rollin": "current", "responder": "current"})])
@pytest.mark.parametrize("lm", LMS)
def test_pair_agents_update_on_another_device(tokenizer, name, options, lm):
    agent = meta_agent(name, tokenizer, lm, **options)
    enc = agent.policy.chat.encode_turns([CTX] * 4, ["Is it a whale?", "Is it big?", "My guess is cat.", "Can it fly?"])
    data = {"enc": enc, "old_a": torch.zeros(2), "old_b": torch.zeros(2),  # as collected: on the host
            "returns": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    idx = np.arange(2)
    step(agent, agent.minibatch_losses(data, 2, idx, idx, agent.policy.model))


@pytest.mark.parametrize("lm", LMS)
def test_ppo_collects_advantages_and_updates_on_another_device(tokenizer, lm):
    agent = meta_agent("ppo", tokenizer, lm)
    enc, _ = agent.policy.chat.encode_dialogues([CTX + [{"role": "assistant", "content": "Is it big?"}],
                                                  CTX + [{"role": "assistant", "content": "My guess is cat."}]])
    data = agent.advantages(enc, torch.tensor([1.0, 0.0]))  # the scores arrive from the host
    assert all(v.device == META for k, v in data.items() if torch.is_tensor(v))
    step(agent, agent.minibatch_losses(data, np.arange(2), 4.0, True))


@pytest.mark.parametrize("lm", LMS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_scoring_stays_on_the_device(tokenizer, lm, temperature):
    policy = Policy(lm(len(tokenizer)).to(META), tokenizer, name="policy")
    enc = policy.chat.encode_turns([CTX] * 2, ["Is it a whale?", "My guess is cat."])
    lp, hidden = policy.token_logprobs(enc, temperature=temperature, return_hidden=True)
    assert lp.device == META and lp.shape == (2, enc.input_ids.shape[1] - 1) and hidden.shape[:2] == enc.input_ids.shape
    turns = policy.token_logprobs(enc, temperature=temperature, turns_only=True)
    assert turns.device == META and turns.shape == lp.shape
    seq = policy.sequence_logprobs(enc, temperature=temperature)
    assert seq.device == META and seq.shape == (2,)
    seq.sum().backward()
    assert all(p.grad is not None and p.grad.device == META for p in policy.model.parameters())
    with torch.no_grad():  # scoring's in-place temperature
        assert policy.sequence_logprobs(enc, temperature=temperature).device == META


def test_pure_losses_stay_on_the_device_of_their_inputs():
    x = torch.zeros(3, device=META)
    assert refuel_loss(x, x, x, x, torch.zeros(3, 2, device=META), eta=1.0).device == META
    assert dpo_loss(x, x, x, x, beta=0.1).device == META
    t = torch.zeros(2, 5, device=META)
    assert gae(t, t, t, 1.0, 0.95).device == META
    assert kl_rewards(t, t, t, torch.ones(2), 0.05).device == META  # scores from the host are moved
    assert policy_loss(t, t, t, t, 0.2)[0].device == META and value_loss(t, t, t, t, 0.2).device == META
