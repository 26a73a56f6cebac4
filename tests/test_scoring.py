"""Memory-safe scoring (:mod:`agents.engine.scoring`) against the plain computation it replaces: full-vocabulary
logits, divided by the temperature, ``log_softmax`` and ``gather`` (what ``Policy.token_logprobs`` did)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agents.engine import scoring
from agents.engine.policy import Policy
from agents.engine.reference import build_tokenizer
from refuel_env.tasks.guess_item import CATALOGUE

CTX = [{"role": "user", "content": "I am thinking of one of these animals: whale, horse, otter, cat."}]
ANSWERS = ["Is it a whale?", "Is it big?", "My guess is cat.", "Can it fly? Does it live in the sea?"]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    tok = build_tokenizer(list(CATALOGUE)[:8], 640)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    return Policy(LlamaForCausalLM(cfg), tok, name="tiny")


def reference(model, enc, temperature):
    """The old path: every position's full-vocabulary logits, a copy divided by the temperature."""
    out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
    logits = out.logits[:, :-1].float() / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, enc.input_ids[:, 1:, None]).squeeze(-1)
    return lp, out.hidden_states[-1]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [None, 700])  # 700 logits: one position per chunk at this vocabulary
def test_log_probs_equal_the_full_logits_path(policy, temperature, chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(scoring, "CHUNK_ELEMENTS", chunk)
    enc = policy.chat.encode_turns([CTX] * 4, ANSWERS)
    with torch.no_grad():
        want, hidden = reference(policy.model, enc, temperature)
        lp, h = policy.token_logprobs(enc, temperature=temperature, return_hidden=True)
        turns = policy.token_logprobs(enc, temperature=temperature, turns_only=True)
        seq = policy.sequence_logprobs_nograd(enc, temperature=temperature, batch_size=3)
    mask = enc.turn_mask[:, 1:].float()
    assert lp.shape == want.shape and lp.dtype == torch.float32 and h.shape == hidden.shape
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, hidden)
    torch.testing.assert_close(turns, want * mask, atol=1e-5, rtol=0)
    assert torch.equal(turns == 0, mask == 0) or (turns[mask == 0] == 0).all()
    torch.testing.assert_close(seq, (want * mask).sum(-1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_equal_the_full_logits_path(policy, temperature, monkeypatch):
    monkeypatch.setattr(scoring, "CHUNK_ELEMENTS", 2000)  # several chunks, each checkpointed
    enc = policy.chat.encode_turns([CTX] * 4, ANSWERS)
    ours, theirs = copy.deepcopy(policy.model), copy.deepcopy(policy.model)
    lp = policy.sequence_logprobs(enc, ours, temperature)
    want = (reference(theirs, enc, temperature)[0] * enc.turn_mask[:, 1:]).sum(-1)
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)
    lp.sum().backward()
    want.sum().backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_head_sees_only_masked_positions_in_chunks(policy, monkeypatch):
    monkeypatch.setattr(scoring, "CHUNK_ELEMENTS", 3 * 640)
    enc = policy.chat.encode_turns([CTX] * 4, ANSWERS)
    rows = []
    hook = policy.model.lm_head.register_forward_hook(lambda m, a, out: rows.append(out.shape[:-1].numel()))
    try:
        with torch.no_grad():
            policy.sequence_logprobs(enc)
    finally:
        hook.remove()
    assert max(rows) <= 3 and sum(rows) == int(enc.turn_mask[:, 1:].sum())


def test_lora_policy_and_its_reference(policy):
    pytest.importorskip("peft")
    lora = Policy(copy.deepcopy(policy.model), policy.tokenizer, "lora").add_lora({"r": 4})
    for p in (q for n, q in lora.model.named_parameters() if "lora_B" in n):
        torch.nn.init.normal_(p, std=0.1)  # adapters that change the outputs
    lora.model.eval()  # no LoRA dropout
    ref = lora.reference()
    enc = policy.chat.encode_turns([CTX] * 4, ANSWERS)
    mask = enc.turn_mask[:, 1:]
    lp = lora.sequence_logprobs(enc, temperature=0.7)
    want = (reference(lora.model, enc, 0.7)[0] * mask).sum(-1)
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=0)
    lp.sum().backward()
    grads = {n: p.grad.clone() for n, p in lora.model.named_parameters() if p.requires_grad}
    lora.model.zero_grad()
    want.sum().backward()
    for n, p in lora.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    with torch.no_grad():
        base = (reference(policy.model, enc, 0.7)[0] * mask).sum(-1)
        torch.testing.assert_close(ref.sequence_logprobs_nograd(enc, temperature=0.7), base, atol=1e-5, rtol=0)
        assert not torch.allclose(lora.sequence_logprobs_nograd(enc, temperature=0.7), base)
