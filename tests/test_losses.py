"""The algorithms' losses against hand-computed values and against TRL's DPOTrainer."""

import copy
import math

import pytest
import torch

from agents.algorithms.dpo import dpo_loss
from agents.engine.policy import Policy
from agents.engine.chat import TemplateError
from agents.algorithms.ppo import gae
from agents.engine.reference import untrained_policy
from agents.algorithms.refuel import refuel_loss


def test_refuel_loss_by_hand():
    logp_a, logp_b = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -0.5])
    old_a, old_b = torch.tensor([-1.5, -2.5]), torch.tensor([-2.0, -1.0])
    returns = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    eta = 2.0
    # pair 1: (0.5 - (-1.0)) - 2*(1-0) = -0.5 -> 0.25 ; pair 2: (0.5 - 0.5) - 2*(-0.5) = 1.0 -> 1.0
    assert refuel_loss(logp_a, logp_b, old_a, old_b, returns, eta).item() == pytest.approx((0.25 + 1.0) / 2)


def test_refuel_loss_zero_at_the_regression_solution():
    old = torch.tensor([-2.0, -4.0])
    returns = torch.tensor([[0.8, 0.2], [0.0, 1.0]])
    eta = 0.5
    logp_a = old + eta * returns[:, 0]
    logp_b = old + eta * returns[:, 1]
    assert refuel_loss(logp_a, logp_b, old, old, returns, eta).item() == pytest.approx(0.0, abs=1e-12)


def test_dpo_loss_by_hand():
    lw, ll, rw, rl = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.0])
    beta = 0.1
    margin = (-1.0 + 1.5) - (-2.0 + 1.0)  # 1.5
    assert dpo_loss(lw, ll, rw, rl, beta).item() == pytest.approx(-math.log(1 / (1 + math.exp(-beta * margin))))


def test_gae_by_hand():
    # one row: actions at positions 0, 1, 3 (position 2 is a user token, skipped)
    rewards = torch.tensor([[0.0, 0.1, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 9.0, 0.2]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    g, lam = 0.9, 0.8
    d3 = 1.0 - 0.2
    a3 = d3
    d1 = 0.1 + g * 0.2 - 0.4
    a1 = d1 + g * lam * a3
    d0 = 0.0 + g * 0.4 - 0.5
    a0 = d0 + g * lam * a1
    out = gae(rewards, values, mask, g, lam)
    assert torch.allclose(out, torch.tensor([[a0, a1, 0.0, a3]]), atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    return untrained_policy(hidden_size=32, num_layers=2, seed=0)


CTX = [{"role": "user", "content": "I am thinking of one of these animals: whale, horse. You have 2 turns."},
       {"role": "assistant", "content": "Is it a mammal?"}, {"role": "user", "content": "Yes."}]


def test_turn_mask_is_exactly_the_assistant_turn(tiny):
    enc = tiny.chat.encode_turns([CTX], ["My guess is whale."])
    ids = enc.input_ids[0][enc.turn_mask[0].bool()]
    assert tiny.tokenizer.decode(ids) == "My guess is whale.<|im_end|>\n"
    full = tiny.tokenizer.apply_chat_template(CTX + [{"role": "assistant", "content": "My guess is whale."}], tokenize=False)
    assert tiny.tokenizer.decode(enc.input_ids[0][enc.attention_mask[0].bool()]) == full
    # whole-dialogue masks cover both assistant turns and nothing else
    enc2, spans = tiny.chat.encode_dialogues([CTX + [{"role": "assistant", "content": "My guess is whale."}]])
    text = tiny.tokenizer.decode(enc2.input_ids[0][enc2.turn_mask[0].bool()])
    assert text == "Is it a mammal?<|im_end|>\nMy guess is whale.<|im_end|>\n"
    assert len(spans[0]) == 2


def test_prefix_inconsistent_template_is_refused(tiny):
    broken = copy.deepcopy(tiny.tokenizer)
    # renders the last message differently from earlier ones: tokenising a prefix is not a prefix of the whole
    broken.chat_template = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\nLAST {{ m['content'] }}"
                            "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    p = Policy(tiny.model, broken)
    with pytest.raises(TemplateError, match="prefix"):
        p.chat.encode_turns([CTX], ["Is it big?"])


def test_tokenizer_without_chat_template_is_refused(tiny):
    tok = copy.deepcopy(tiny.tokenizer)
    tok.chat_template = None
    with pytest.raises(TemplateError, match="chat template"):
        Policy(tiny.model, tok)


def test_dpo_loss_matches_trl_dpo_trainer(tiny, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(1)
    model = copy.deepcopy(tiny.model)
    ref = copy.deepcopy(tiny.model)
    with torch.no_grad():  # a reference that differs from the policy, so the loss is not trivially log 2
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.requires_grad_(False)
    pairs = [(CTX, "My guess is whale.", "Is it big?"),
             (CTX[:1], "Does it live in water?", "My guess is horse."),
             (CTX, "I think it is a horse.", "Can it fly?")]
    ds = Dataset.from_dict({"prompt": [c for c, _, _ in pairs],
                            "chosen": [[{"role": "assistant", "content": w}] for _, w, _ in pairs],
                            "rejected": [[{"role": "assistant", "content": l}] for _, _, l in pairs]})
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(pairs), beta=0.1, loss_type=["sigmoid"],
                     bf16=False, use_cpu=True, report_to=[], max_length=None, dataloader_drop_last=False)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tiny.tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch)
    ours_pol, ours_ref = Policy(model, tiny.tokenizer), Policy(ref, tiny.tokenizer)
    ctx = [c for c, _, _ in pairs]
    with torch.no_grad():
        lw = ours_pol.sequence_logprobs(ours_pol.chat.encode_turns(ctx, [w for _, w, _ in pairs]))
        ll = ours_pol.sequence_logprobs(ours_pol.chat.encode_turns(ctx, [l for _, _, l in pairs]))
        rw = ours_ref.sequence_logprobs(ours_ref.chat.encode_turns(ctx, [w for _, w, _ in pairs]))
        rl = ours_ref.sequence_logprobs(ours_ref.chat.encode_turns(ctx, [l for _, _, l in pairs]))
    ours = dpo_loss(lw, ll, rw, rl, 0.1)
    assert abs(float(ours) - float(trl_loss)) < 1e-5, (float(ours), float(trl_loss))
    assert abs(float(ours) - math.log(2)) > 1e-4  # the comparison is not vacuous
