"""The algorithms' losses against hand-computed values and against TRL's DPOTrainer."""

import copy
import math

import numpy as np

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


# ------------------------------------------------------------------------------------------ PPO's terms
def test_ppo_policy_loss_clips_the_ratio_by_hand():
    """The clipped surrogate, token by token: a ratio outside [1 - eps, 1 + eps] on the side the advantage favours
    is clipped (its value is the clipped one and its gradient is zero); on the other side it is not."""
    from agents.algorithms.ppo import policy_loss

    eps = 0.2
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.1, 3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])  # the last token is not an assistant token
    logp_old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5, -1.0]])
    logp = (logp_old + ratio.log()).clone().requires_grad_(True)
    loss, r = policy_loss(logp, logp_old, adv, mask, eps)
    assert torch.allclose(r, ratio)
    # per token max(-A r, -A clip(r)):
    #   r=1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped)    r=0.5, A=+1: max(-0.5, -0.8) = -0.5
    #   r=1.5, A=-1: max( 1.5,  1.2) =  1.5              r=0.5, A=-1: max( 0.5,  0.8) =  0.8 (clipped)
    #   r=1.1, A=+2: -2.2 (inside the range)             masked token: not counted
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5)
    loss.backward()
    # d/d logp of -A r is -A r where the ratio is not clipped, 0 where it is (and on the masked token)
    expected = torch.tensor([[0.0, -0.5, 1.5, 0.0, -2.2, 0.0]]) / 5
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_ppo_value_loss_clips_the_value_update_by_hand():
    from agents.algorithms.ppo import masked_mean, value_loss

    v = torch.tensor([[1.0, 0.0, 0.5, 9.0]], requires_grad=True)
    v_old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    ret = torch.tensor([[0.0, 1.0, 0.6, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # clip(v, v_old -+ 0.2) = 0.7, 0.3, 0.5: max((v - R)^2, (v_clip - R)^2) = max(1, 0.49), max(1, 0.49), 0.01
    loss = value_loss(v, v_old, ret, mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 1.0 + 0.01) / 3)
    loss.backward()
    assert torch.allclose(v.grad, torch.tensor([[1.0, -1.0, -0.1, 0.0]]) / 3, atol=1e-6)
    assert masked_mean(torch.tensor([[2.0, 4.0]]), torch.tensor([[0.0, 0.0]])).item() == 0.0  # no token: 0, not nan


def test_ppo_kl_rewards_by_hand():
    from agents.algorithms.ppo import kl_rewards

    old = torch.tensor([[-1.0, -2.0, -0.5, -1.0], [-0.3, -0.7, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -4.0], [-0.1, -0.9, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    out = kl_rewards(old, ref, mask, torch.tensor([1.0, 0.25]), 0.1)
    expected = torch.tensor([[-0.1 * 0.5, -0.1 * -1.0, 0.0, -0.1 * 3.0 + 1.0],  # score on the LAST assistant token
                             [-0.1 * -0.2, -0.1 * 0.2 + 0.25, 0.0, 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.fixture(scope="module")
def ppo_env():
    import gymnasium as gym

    import refuel_env  # noqa: F401

    return gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=3)


def test_ppo_collect_pays_the_kl_penalty_to_a_reference_that_differs(tiny, ppo_env):
    """On ``collect``, with pi_ref != pi_t: kl_coef changes the advantages, and (gamma = lam = 1, no whitening, a
    fresh value head that says 0) each token's advantage is the sum of the rewards from it on, where the reward is
    ``-kl_coef * (ln pi_old - ln pi_ref)`` per assistant token plus the judge's score on the last one."""
    from agents import make_agent

    torch.manual_seed(4)
    ref = tiny.clone("pi_ref")
    with torch.no_grad():
        for p in ref.model.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def collect(kl, **kw):
        agent = make_agent("ppo", policy=Policy(copy.deepcopy(tiny.model), tiny.tokenizer), ref_policy=ref,
                           batch_size=4, seed=7, max_new_tokens=8, kl_coef=kl, **kw)
        return agent, agent.collect(ppo_env).data

    exact = dict(gamma=1.0, lam=1.0, whiten_advantages=False)
    agent, d0 = collect(0.0, **exact)
    _, d1 = collect(0.05, **exact)
    enc, mask, old = d1["enc"], d1["mask"], d1["old"]
    assert torch.equal(enc.input_ids, d0["enc"].input_ids)  # the same dialogues: kl_coef does not change sampling
    assert torch.all(d1["values"] == 0)
    with torch.no_grad():
        ref_lp = ref.token_logprobs(enc)
    assert ((old - ref_lp).abs() * mask).sum() > 1e-3  # the reference does differ from the policy
    reward = -0.05 * (old - ref_lp) * mask
    to_go = reward.flip(1).cumsum(1).flip(1) * mask  # sum of the KL rewards from each token on
    assert torch.allclose((d1["adv"] - d0["adv"]) * mask, to_go, atol=1e-5)
    for i in range(len(mask)):  # kl_coef 0: every token's advantage is the dialogue's final score
        on = mask[i] > 0
        assert torch.allclose(d0["adv"][i][on], d0["adv"][i][on][-1].expand(int(on.sum())))
    assert torch.allclose(d1["returns"], d1["adv"] + d1["values"])
    assert d1["kl"] == pytest.approx(float(((old - ref_lp) * mask).sum() / mask.sum()), rel=1e-4)
    # with the default GAE and whitening the advantages differ too
    _, w0 = collect(0.0)
    _, w1 = collect(0.05)
    assert not torch.allclose(w0["adv"], w1["adv"], atol=1e-4)


def test_gae_of_one_token_and_masked_mean_of_one_token():
    out = gae(torch.tensor([[0.7], [0.2]]), torch.tensor([[0.5], [0.0]]), torch.tensor([[1.0], [0.0]]), 0.9, 0.8)
    assert torch.allclose(out, torch.tensor([[0.2], [0.0]]))
    from agents.algorithms.ppo import masked_mean

    assert masked_mean(torch.tensor([[3.0, 5.0]]), torch.tensor([[0.0, 1.0]])).item() == 5.0


def test_ppo_value_loss_takes_the_clipped_error_where_it_is_larger():
    from agents.algorithms.ppo import value_loss

    v = torch.tensor([[1.0, -1.0, 0.1]], requires_grad=True)
    v_old = torch.tensor([[0.0, 0.0, 0.05]])
    ret = torch.tensor([[0.9, -0.9, -0.5]])
    # clip(v) = 0.2 and -0.2: (0.2 - 0.9)^2 = 0.49 > (1 - 0.9)^2 = 0.01, both sides: the clipped error, no gradient;
    # the third moves by 0.05 from V_old = 0.05, inside the range: its own error (0.6^2), its own gradient
    loss = value_loss(v, v_old, ret, torch.ones(1, 3), 0.2)
    assert loss.item() == pytest.approx(0.5 * (0.49 + 0.49 + 0.36) / 3)
    loss.backward()
    assert torch.allclose(v.grad, torch.tensor([[0.0, 0.0, 0.6 / 3]]), atol=1e-6)


def test_ppo_update_by_hand_on_one_minibatch(tiny, ppo_env):
    """One epoch, one minibatch: the update's forward pass sees pi_old itself (ratio 1), so its metrics are known:
    clipfrac 0, approx_kl 0, pg_loss = -mean(whitened A) = 0, vf_loss = 0.5 mean(R^2) (the fresh value head says 0)."""
    from agents import make_agent
    from agents.base import Batch

    torch.manual_seed(5)
    ref = tiny.clone("pi_ref")
    with torch.no_grad():
        for p in ref.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    agent = make_agent("ppo", policy=Policy(copy.deepcopy(tiny.model), tiny.tokenizer), ref_policy=ref, batch_size=6,
                       seed=3, max_new_tokens=8, temperature=0.7, epochs=1, minibatch_size=6, kl_coef=0.05)
    batch = agent.collect(ppo_env)
    d, s = batch.data, batch.stats
    assert s["examples"] == 6 == len(batch) and s["template_errors"] == 0 and s["nonfinite_returns"] == 0
    assert 0.0 <= s["mean_return"] <= 1.0
    with torch.no_grad():
        lp = agent.policy.token_logprobs(d["enc"], temperature=0.7)
    m = d["mask"]
    assert torch.allclose(d["old"] * m, lp * m, atol=1e-5)  # pi_old at the agent's temperature, on the turn tokens
    mu = (d["adv"] * m).sum() / m.sum()
    sd = (((d["adv"] - mu) ** 2) * m).sum() / m.sum()
    assert abs(float(mu)) < 1e-5 and float(sd) == pytest.approx(1.0, abs=1e-3)  # whitened over the batch's tokens
    assert torch.all(d["adv"][m == 0] == 0)
    vf = 0.5 * float((d["returns"] ** 2 * m).sum() / m.sum())
    out = agent.update(batch)
    assert out["clipfrac"] == 0.0 and abs(out["approx_kl"]) < 1e-6 and abs(out["pg_loss"]) < 1e-5
    assert out["vf_loss"] == pytest.approx(vf, rel=1e-4)
    assert out["loss"] == pytest.approx(out["pg_loss"] + 0.5 * out["vf_loss"], rel=1e-4, abs=1e-6)
    assert out["dialogues"] == 6 and out["kl_to_ref"] == d["kl"] and out["skipped_nonfinite_loss"] == 0
    for k in (1, 2):  # an empty batch is skipped and counted
        empty = agent.update(Batch({}, {}))
        assert math.isnan(empty["loss"]) and empty["skipped_empty_batches"] == k


def test_dpo_agent_ranks_each_pair_by_its_returns(tiny):
    """DPOAgent.loss: the winner of each pair is the response with the higher return (a, then b, then b here), and
    reward_accuracy is the share of pairs whose implicit-reward margin is > 0 (a margin of exactly 0 is not)."""
    from agents import make_agent

    agent = make_agent("dpo", policy=tiny, beta=0.5)
    # log-ratios ln pi - ln pi_ref of a: 0.3, 0.25, 3.0; of b: -0.5, 0.25, -2.0 (exact in float32: margin 0 is 0)
    logp_a, ref_a = torch.tensor([-1.0, -3.0, -1.0]), torch.tensor([-1.3, -3.25, -4.0])
    logp_b, ref_b = torch.tensor([-1.5, -2.0, -3.0]), torch.tensor([-1.0, -2.25, -1.0])
    returns = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.7]])
    loss, info = agent.loss(logp_a, logp_b, ref_a, ref_b, returns)
    margins = torch.tensor([0.8, 0.0, -5.0])  # winner's log-ratio minus the loser's: a, b, b
    assert loss.item() == pytest.approx(float(-torch.nn.functional.logsigmoid(0.5 * margins).mean()))
    assert float(info["reward_accuracy"]) == pytest.approx(1 / 3)


def test_refuel_agent_loss_is_the_refuel_loss(tiny):
    from agents import make_agent

    agent = make_agent("refuel", policy=tiny, eta=2.0)
    args = (torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -0.5]), torch.tensor([-1.5, -2.5]),
            torch.tensor([-2.0, -1.0]), torch.tensor([[1.0, 0.0], [0.25, 0.75]]))
    loss, info = agent.loss(*args)
    assert loss.item() == pytest.approx(refuel_loss(*args, 2.0).item()) and info == {}


@pytest.mark.parametrize("agent, options, words", [
    ("dpo", {"beta": 0.0}, "beta must be"), ("dpo", {"beta": float("inf")}, "beta must be"),
    ("dpo", {"beta": True}, "beta must be"), ("dpo", {"beta": "0.1"}, "beta must be"),
    ("refuel", {"eta": float("nan")}, "eta must be"), ("refuel", {"eta": True}, "eta must be"),
    ("refuel", {"eta": "1"}, "eta must be"), ("sft", {"speaker": "teacher"}, "speaker must be"),
    ("refuel", {"continuations": True}, "continuations must be"), ("refuel", {"continuations": 2.0}, "continuations must be"),
    ("refuel", {"responder": "offline"}, "responder one of"), ("refuel", {"target": "whole"}, "target one of"),
])
def test_agent_options_out_of_range_are_refused(agent, options, words, tiny):
    from agents import make_agent

    with pytest.raises(ValueError, match=words):
        make_agent(agent, policy=tiny, **options)


def test_agent_options_in_range_are_accepted(tiny):
    from agents import make_agent

    assert make_agent("dpo", policy=tiny, beta=2).config.beta == 2
    assert make_agent("refuel", policy=tiny, eta=-1.5).config.eta == -1.5  # the negative control's eta
    assert make_agent("refuel", policy=tiny, eta=0.0).config.eta == 0.0
    assert make_agent("refuel", policy=tiny, continuations=3).config.continuations == 3
    assert make_agent("sft", policy=tiny, speaker="offline").config.speaker == "offline"


@pytest.mark.parametrize("speaker", ["expert", "offline"])
def test_sft_clones_its_speakers_dialogues_by_hand(speaker, tiny, ppo_env, monkeypatch):
    """SFT (the positive control): collect rolls out the task's speaker, seeded by the agent (the same seed, the
    same dialogues), and trains every assistant turn; the update's loss is the mean NLL over those tokens."""
    from agents import make_agent
    from agents.base import Batch
    from agents.engine.rollout import RolloutEngine

    seen = []
    real = RolloutEngine.dialogues
    monkeypatch.setattr(RolloutEngine, "dialogues", lambda self, *a, **k: seen.append(real(self, *a, **k)) or seen[-1])
    kinds = []
    task = ppo_env.unwrapped.machine.task if hasattr(ppo_env, "unwrapped") else ppo_env.machine.task
    for attr in ("expert_speaker", "offline_speaker"):
        orig = getattr(task, attr)
        monkeypatch.setattr(task, attr, lambda seed=None, _o=orig, _a=attr: kinds.append((_a, seed)) or _o(seed=seed))

    def agent():
        return make_agent("sft", policy=Policy(copy.deepcopy(tiny.model), tiny.tokenizer), speaker=speaker, batch_size=5,
                          seed=2, epochs=1, minibatch_size=5, temperature=0.5)

    a = agent()
    batch = a.collect(ppo_env)
    states = seen[-1]
    assert [k for k, _ in kinds] == [f"{speaker}_speaker"] and isinstance(kinds[0][1], int)
    b = agent().collect(ppo_env)
    assert [s.messages for s in seen[-1]] == [s.messages for s in states]  # seeded by the agent
    assert batch.stats["examples"] == 5 == len(batch) and batch.stats["template_errors"] == 0
    assert batch.stats["mean_return"] == pytest.approx(np.mean([s.scores[-1] for s in states]))
    enc = batch.data["enc"]
    assert torch.equal(enc.input_ids, b.data["enc"].input_ids)
    for i, s in enumerate(states):
        last = max(k for k, m in enumerate(s.messages) if m["role"] == "assistant")
        assert tiny.tokenizer.decode(enc.input_ids[i][enc.attention_mask[i].bool()]) == \
            tiny.tokenizer.apply_chat_template(s.messages[: last + 1], tokenize=False)  # the dialogue, as it was
        trained = tiny.tokenizer.decode(enc.input_ids[i][enc.turn_mask[i].bool()])
        said = [m["content"] for m in s.messages if m["role"] == "assistant"]
        assert trained == "".join(f"{t}<|im_end|>\n" for t in said)
    with torch.no_grad():
        lp = a.policy.token_logprobs(enc, temperature=0.5)
    mask = enc.turn_mask[:, 1:].float()
    nll = float(-(lp * mask).sum() / mask.sum())
    before = [p.detach().clone() for p in a.policy.model.parameters()]
    out = a.update(batch)
    assert out["loss"] == pytest.approx(nll, rel=1e-5)
    assert any(not torch.equal(p, q) for p, q in zip(before, a.policy.model.parameters()))  # a step was taken
    for k in (1, 2):
        assert math.isnan(a.update(Batch({}, {}))["loss"]) and a.skipped["empty_batches"] == k


def test_turn_masks_of_a_multi_turn_response_leave_out_the_context(tiny):
    """dialogue_row: the mask covers the assistant turns of the response only (not an assistant turn of the context),
    as 0/1 integers; encode_dialogues stops at the last assistant turn (a trailing user message is not encoded)."""
    reply = [{"role": "assistant", "content": "Does it live in water?"}, {"role": "user", "content": "No."},
             {"role": "assistant", "content": "My guess is horse."}]
    ids, m = tiny.chat.dialogue_row(CTX, reply)
    assert m.dtype == torch.long and set(m.unique().tolist()) == {0, 1} and len(ids) == len(m)
    assert tiny.tokenizer.decode(ids[m.bool()]) == "Does it live in water?<|im_end|>\nMy guess is horse.<|im_end|>\n"
    assert tiny.tokenizer.decode(ids) == tiny.tokenizer.apply_chat_template(CTX + reply, tokenize=False)
    enc, spans = tiny.chat.encode_dialogues([CTX + reply + [{"role": "user", "content": "Correct!"}]])
    full = tiny.tokenizer.apply_chat_template(CTX + reply, tokenize=False)
    assert tiny.tokenizer.decode(enc.input_ids[0][enc.attention_mask[0].bool()]) == full
    assert enc.turn_mask.dtype == torch.long and set(enc.turn_mask.unique().tolist()) == {0, 1}
    assert len(spans[0]) == 3 and int(enc.turn_mask[0].sum()) == sum(b - a for a, b in spans[0])
    with pytest.raises(ValueError):
        tiny.chat.encode_turns([CTX, CTX], ["Is it big?"])  # a response for every context
    assert tiny.chat.encode_turns([CTX], ["Is it big?"]).turn_mask.dtype == torch.long


def test_a_prefix_inconsistent_template_is_refused_and_counted_once_per_refusal(tiny):
    broken = copy.deepcopy(tiny.tokenizer)
    broken.chat_template = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\nLAST {{ m['content'] }}"
                            "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    chat = Policy(tiny.model, broken).chat
    reply = [{"role": "assistant", "content": "Is it big?"}]
    for k, call in enumerate([lambda: chat.dialogue_row(CTX, reply), lambda: chat.encode_dialogues([CTX + reply]),
                              lambda: chat.encode_turns([CTX], ["Is it big?"])], start=1):
        with pytest.raises(TemplateError):
            call()
        assert chat.stats["template_errors"] == k


def test_ppo_value_head_goes_into_the_checkpoint_state(tiny):
    from agents import make_agent

    a, b = make_agent("ppo", policy=tiny, seed=0), make_agent("ppo", policy=tiny, seed=1)
    with torch.no_grad():
        a.value_head.weight.normal_()
        a.value_head.bias.fill_(0.5)
    state = a.extra_state()
    assert set(state) == {"value_head"}
    b.load_extra_state(state)
    assert torch.equal(b.value_head.weight, a.value_head.weight) and float(b.value_head.bias) == 0.5


@pytest.mark.parametrize("name", ["sft", "ppo", "refuel"])
def test_an_update_whose_every_step_is_non_finite_reports_nan_and_counts_them(name, tiny, ppo_env):
    from agents import make_agent

    agent = make_agent(name, policy=Policy(copy.deepcopy(tiny.model), tiny.tokenizer), batch_size=4, seed=1,
                       max_new_tokens=8, epochs=1, minibatch_size=2)
    batch = agent.collect(ppo_env)
    assert len(batch) > 0
    with torch.no_grad():
        for p in agent.policy.model.parameters():
            p.fill_(float("nan"))
    out = agent.update(batch)
    assert math.isnan(out["loss"]) and agent.skipped["nonfinite_loss"] == -(-len(batch) // 2)


@pytest.mark.parametrize("name", ["sft", "ppo"])
def test_whole_dialogues_a_broken_template_refuses_are_counted_and_left_out(name, tiny, ppo_env):
    from agents import make_agent

    broken = copy.deepcopy(tiny.tokenizer)
    broken.chat_template = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\\nLAST {{ m['content'] }}"
                            "{% else %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] }}{% endif %}<|im_end|>\\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
    agent = make_agent(name, policy=Policy(copy.deepcopy(tiny.model), broken), batch_size=3, seed=0, max_new_tokens=8)
    batch = agent.collect(ppo_env)
    assert len(batch) == 0 and batch.data == {}
    assert batch.stats["template_errors"] == 3 and batch.stats["examples"] == 0 and "dialogues" in batch.stats


def test_a_template_that_re_renders_earlier_turns_later_is_refused_for_whole_dialogues(tiny):
    """Each turn's own prefix is consistent, but the whole dialogue renders turn 1 differently (from 3 messages
    on): the masks of multi-turn responses would be off, so they are refused and counted once."""
    late = copy.deepcopy(tiny.tokenizer)
    late.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\\n{% if loop.index0 == 1 and "
                          "messages|length >= 3 %}X {% endif %}{{ m['content'] }}<|im_end|>\\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
    chat = Policy(tiny.model, late).chat
    reply = [{"role": "assistant", "content": "Is it big?"}, {"role": "user", "content": "Yes."},
             {"role": "assistant", "content": "My guess is whale."}]
    for k, call in enumerate([lambda: chat.dialogue_row(CTX[:1], reply), lambda: chat.dialogue_row(CTX[:1], reply),
                              lambda: chat.encode_dialogues([CTX[:1] + reply])], start=1):
        with pytest.raises(TemplateError, match="not a prefix of the whole dialogue"):
            call()
        assert chat.stats["template_errors"] == k


def test_encoded_turns_concatenate_with_the_pad_token():
    from agents.engine.chat import EncodedTurns

    a = EncodedTurns(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long), torch.tensor([[0, 1, 1]]))
    b = EncodedTurns(torch.tensor([[4]]), torch.ones(1, 1, dtype=torch.long), torch.tensor([[1]]))
    c = EncodedTurns.cat([a, b], pad_token_id=7)
    assert c.input_ids.tolist() == [[1, 2, 3], [4, 7, 7]]
    assert c.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]] and c.turn_mask.tolist() == [[0, 1, 1], [1, 0, 0]]
