"""The benchmark's rows are declared configurations: each one's data source, responder, target and trained tokens,
the refusal of contradictory rows, and the protocol of the paper (the policy is not told H)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import refuel_env  # noqa: F401
from agents import make_agent
from agents.harness.build import agent_kwargs
from agents.harness.config import ExperimentConfig
from agents.harness.rows import PAPER_ROWS, agent_spec
from refuel_env import SamplingParams
from refuel_env.core import DialogueMachine, machine_of
from refuel_env.tasks.guess_item import FINAL

PAIR_ROWS = {  # label: (agent, rollin, responder, target)
    "REFUEL": ("refuel", "current", "current", "relative_future"),
    "REBEL-LT-OFFLINE": ("rebel", "offline", "current", "last_turn"),
    "REBEL-LT-MIXED": ("rebel", "reference", "current", "last_turn"),
    "REBEL-MT": ("rebel", "none", "current", "multi_turn"),
    "DPO-LT-OFFLINE": ("dpo", "offline", "current", "last_turn"),
    "DPO-LT-MIXED": ("dpo", "reference", "current", "last_turn"),
    "DPO-MT": ("dpo", "none", "current", "multi_turn"),
    "DPO-ONLINE": ("dpo", "current", "current", "last_turn"),
}


@pytest.fixture(scope="module")
def env():
    return gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=3)


@pytest.mark.parametrize("label", list(PAIR_ROWS))
def test_each_paper_row_declares_its_data_source_responder_and_target(label, tiny_reference):
    agent_name, rollin, responder, target = PAIR_ROWS[label]
    spec = agent_spec(label)
    kw = agent_kwargs(ExperimentConfig(agents=[label]), spec, seed=0)
    agent = make_agent(spec.agent, policy=tiny_reference, **kw)
    c = agent.config
    assert (spec.agent, c.rollin, c.responder, c.target) == (agent_name, rollin, responder, target)
    assert type(agent).anchor == ("pi_ref" if agent_name == "dpo" else "pi_t")


def test_the_comparison_has_the_papers_rows_controls_and_references():
    assert set(PAPER_ROWS) >= {"pi_0", "EXPERT", "POSITIVE-CONTROL", "NEGATIVE-CONTROL", "PPO", *PAIR_ROWS}
    neg = agent_kwargs(ExperimentConfig(agents=["NEGATIVE-CONTROL"], tuned={"REFUEL": {"eta": 2.0, "lr": 1e-3}}),
                       agent_spec("NEGATIVE-CONTROL"), seed=0)
    assert neg["eta"] == -2.0 and neg["lr"] == 1e-3  # REFUEL's tuned settings, its target negated
    assert agent_spec("POSITIVE-CONTROL").agent == "sft" and agent_spec("EXPERT").agent == "expert"
    graded = agent_spec("REFUEL-GRADED")
    assert graded.env == {"task_kwargs": {"graded": True}} and graded.label != "REFUEL"


@pytest.mark.parametrize("options, words", [
    ({"target": "multi_turn"}, "contradict"),  # a multi-turn pair has no roll-in
    ({"rollin": "none"}, "contradict"),
    ({"continuations": 3, "target": "last_turn"}, "no continuation"),
    ({"continuations": 0}, "continuations must be"),
    ({"rollin": "dataset"}, "rollin must be one of"),
    ({"temperature": 0.0}, "identical"),
])
def test_contradictory_rows_are_refused_with_a_clear_message(options, words, tiny_reference):
    with pytest.raises(ValueError, match=words):
        make_agent("refuel", policy=tiny_reference, **options)


def test_a_row_table_with_an_unknown_key_is_refused():
    with pytest.raises(ValueError, match="row table takes"):
        agent_spec({"agent": "refuel", "optoins": {}})


def test_multi_turn_pairs_train_every_assistant_turn_of_two_whole_dialogues(env, tiny_reference):
    agent = make_agent("rebel", policy=tiny_reference, batch_size=12, target="multi_turn", rollin="none", seed=3)
    batch = agent.collect(env)
    assert len(batch) > 0 and batch.stats["turn1/drawn"] == 12 and not any(k.startswith("turn2") for k in batch.stats)
    d, n = batch.data, len(batch)
    tok = agent.policy.tokenizer
    for i in range(n):
        ctx, (a, b) = d["contexts"][i], d["responses"][i]
        assert len(ctx) == 1 and ctx[0]["role"] == "user"  # branched at the opening
        for row, resp in ((i, a), (i + n, b)):
            trained = tok.decode(d["enc"].input_ids[row][d["enc"].turn_mask[row].bool()])
            turns = [m["content"] for m in resp if m["role"] == "assistant"]
            assert trained.count("<|im_end|>") == len(turns) >= 1  # every assistant turn, each with its end token
            assert all(t in trained for t in turns) and not any(m["content"] in trained for m in resp if m["role"] == "user")


def test_continuations_average_several_futures_of_each_branch(env, tiny_reference):
    one = make_agent("refuel", policy=tiny_reference, batch_size=8, seed=5).collect(env)
    four = make_agent("refuel", policy=tiny_reference, batch_size=8, seed=5, continuations=4).collect(env)
    assert four.stats["dialogues"] > one.stats["dialogues"]
    returns = four.data["returns"].numpy()
    assert np.all((returns >= 0) & (returns <= 1))
    roots = 8 - four.stats["ended_before_branch"]  # 8 started, a second branch each, 3 more futures per branch
    assert four.stats["dialogues"] == 8 + roots + 2 * roots * 3


def test_the_policy_is_not_told_the_horizon_and_learns_the_last_turn_from_the_user():
    m = DialogueMachine(max_turns=4, horizon="fixed")
    s = m.new_state(0)
    assert not any(ch.isdigit() for ch in s.messages[0]["content"])  # nothing says how many turns there are
    assert not m.task.is_final_turn(s.messages)
    for t in range(3):
        m.step([s], ["Is it a mammal?" if t == 0 else "Does it live in water?" if t == 1 else "Is it bigger than a person?"])
    assert FINAL in s.messages[-1]["content"] and m.task.is_final_turn(s.messages)
    one = m.new_state(1, {"horizon": 1})
    assert m.task.is_final_turn(one.messages)  # H = 1: the opening itself asks for the final guess
    told = DialogueMachine(max_turns=4, horizon="fixed", task_kwargs={"tell_horizon": True}).new_state(0)
    assert "You have 4 turns" in told.messages[0]["content"]


def test_graded_judge_scores_the_final_guess_by_its_posterior():
    m = DialogueMachine(max_turns=2, horizon="fixed", task_kwargs={"graded": True, "n_items": 8})
    s = m.new_state(0, {"goal": "whale"})
    m.step([s], ["Is it a mammal?"])  # yes: whale, horse, otter, cat remain
    (r,) = m.step([s], ["Is it a horse?"])
    assert r.reward == pytest.approx(0.25)  # wrong, but a quarter of the remaining mass
    b = DialogueMachine(max_turns=2, horizon="fixed", task_kwargs={"n_items": 8})
    s = b.new_state(0, {"goal": "whale"})
    b.step([s], ["Is it a mammal?"])
    assert b.step([s], ["Is it a horse?"])[0].reward == 0.0


def test_expert_and_demonstrator_are_the_tasks_own_speakers():
    m = DialogueMachine(max_turns=4, horizon="fixed", task_kwargs={"demo_epsilon": 1.0, "demo_final_error": 1.0})
    demo, expert = m.task.offline_speaker(seed=0), m.task.expert_speaker(seed=0)
    s = m.new_state(3)
    assert m.task.parse(demo.act([s.messages])[0]).kind == "guess"  # epsilon 1: always guesses early
    assert m.task.parse(expert.act([s.messages])[0]).kind == "question"
    ok = 0
    for seed in range(20):  # final_error 1: the final guess is never the demonstrator's best
        d = DialogueMachine(max_turns=1, horizon="fixed", task_kwargs={"demo_final_error": 1.0})
        st = d.new_state(seed)
        guess = d.task.parse(d.task.offline_speaker(seed=seed).act([st.messages])[0]).key
        ok += guess != d.task.items[0]
    assert ok == 20


def test_eval_prefix_dialogues_are_the_same_dialogues(env, tiny_reference):
    from agents.harness.evaluate import rollout

    p = SamplingParams(max_new_tokens=24, temperature=1.0)
    small, big = rollout(tiny_reference, env, 6, seed=9, params=p), rollout(tiny_reference, env, 20, seed=9, params=p)
    assert [s.messages for s in small.finals] == [s.messages for s in big.finals[:6]]


# ------------------------------------------------------------------------------------------ who speaks where
# Each row's roll-in source, responder (who answers at turn h and continues the branches), target and anchor,
# checked on what the agent's collect actually did after pi_t has moved away from pi_0 (as an update would move
# it): every generation of pi_t, pi_0, the offline demonstrator and the expert is recorded, and every assistant
# message of the collected data is traced back to the speaker that produced it from that very prefix.
ROW_SPEAKERS = {  # label: (roll-in, responder and continuation, target); PPO and SFT: (None, who speaks, "dialogues")
    "REFUEL": ("pi_t", "pi_t", "relative_future"),
    "NEGATIVE-CONTROL": ("pi_t", "pi_t", "relative_future"),
    "REFUEL-GRADED": ("pi_t", "pi_t", "relative_future"),
    "REFUEL-K4": ("pi_t", "pi_t", "relative_future"),
    "REBEL-LT-OFFLINE": ("offline", "pi_t", "last_turn"),
    "REBEL-LT-MIXED": ("pi_0", "pi_t", "last_turn"),
    "REBEL-MT": (None, "pi_t", "multi_turn"),
    "DPO-LT-OFFLINE": ("offline", "pi_t", "last_turn"),
    "DPO-LT-MIXED": ("pi_0", "pi_t", "last_turn"),
    "DPO-MT": (None, "pi_t", "multi_turn"),
    "DPO-ONLINE": ("pi_t", "pi_t", "last_turn"),
    "PPO": (None, "pi_t", "dialogues"),
    "POSITIVE-CONTROL": (None, "expert", "dialogues"),
}
WHO = {"current": "pi_t", "reference": "pi_0", "offline": "offline", "none": None}


class Speakers:
    """Records, for every conversation a speaker was asked to continue, what it said."""

    def __init__(self, limit: int):
        self.said: dict = {}
        self.limit = limit

    @staticmethod
    def key(conv):
        return tuple((m["role"], m["content"]) for m in conv)

    def record(self, who, convs, texts):
        for c, t in zip(convs, texts):
            self.said.setdefault(self.key(c), set()).add((who, t[: self.limit]))

    def policy(self, who, policy):
        real = policy.generate

        def generate(convs, params, seed=None):
            out = real(convs, params, seed=seed)
            self.record(who, convs, out.texts)
            return out

        policy.generate = generate

    def scripted(self, who, speaker):
        real = speaker.act

        def act(convs):
            out = real(convs)
            self.record(who, convs, out)
            return out

        speaker.act = act
        return speaker

    def who(self, prefix, text) -> set:
        return {w for w, t in self.said.get(self.key(prefix), ()) if t == text}

    def speakers(self) -> set:
        return {w for said in self.said.values() for w, _ in said}

    def check(self, messages, start, expected, what):
        """Every assistant message from index ``start`` on was said by ``expected`` from the same prefix. (Two
        speakers may say the same thing from the same state, e.g. pi_0 and the demonstrator it imitates: the
        speakers that were never to speak are checked to be silent, see :func:`check_pairs`.)"""
        n = 0
        for j in range(start, len(messages)):
            if messages[j]["role"] == "assistant":
                assert expected in self.who(messages[:j], messages[j]["content"]), (what, j, messages)
                n += 1
        return n


def collect_with_speakers(label, tiny_reference, monkeypatch, options=None):
    """Collect one batch of row ``label`` (or an agent with ``options``) with pi_t != pi_0, recording who spoke."""
    import copy

    import torch

    from agents.engine.policy import Policy
    from agents.engine.rollout import RolloutEngine
    from agents.harness.build import make_env, training_env
    from agents.harness.config import EnvConfig

    cfg = ExperimentConfig(agents=[label], env=EnvConfig(max_turns=3))
    spec = agent_spec(label)
    kw = {**agent_kwargs(cfg, spec, seed=11), **(options or {}), "batch_size": 16, "max_new_tokens": 16}
    env = training_env(cfg, spec) or make_env(cfg.env)
    agent = make_agent(spec.agent, policy=Policy(copy.deepcopy(tiny_reference.model), tiny_reference.tokenizer), **kw)
    torch.manual_seed(0)
    with torch.no_grad():  # pi_t moves away from pi_0 (agent.ref_policy, the frozen copy made at construction)
        for p in agent.policy.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    machine = machine_of(env)
    spy = Speakers(machine.max_message_chars)
    spy.policy("pi_t", agent.policy)
    spy.policy("pi_0", agent.ref_policy)
    task = machine.task
    for who, attr in (("offline", "offline_speaker"), ("expert", "expert_speaker")):
        real = getattr(task, attr)
        monkeypatch.setattr(task, attr, lambda seed=None, _real=real, _who=who: spy.scripted(_who, _real(seed=seed)))
    seen = {}
    for name in ("pairs", "dialogues"):
        real = getattr(RolloutEngine, name)

        def wrapper(self, *a, _real=real, _name=name, **k):
            out = _real(self, *a, **k)
            seen[_name] = out
            return out

        monkeypatch.setattr(RolloutEngine, name, wrapper)
    batch = agent.collect(env)
    return agent, batch, spy, seen


def check_pairs(agent, batch, spy, pairs, rollin, responder, target):
    import torch

    assert len(pairs.contexts) > 0 and len(batch) > 0
    assert spy.speakers() == {rollin, responder} - {None}  # nobody else spoke
    said = {"rollin": 0, "response": 0, "continuation": 0}
    for i, ctx in enumerate(pairs.contexts):
        h, H = int(pairs.turns[i]), int(pairs.horizons[i])
        assert sum(m["role"] == "assistant" for m in ctx) == h - 1  # s_h: h - 1 turns rolled in
        said["rollin"] += spy.check(ctx, 0, rollin, "roll-in")
        if target == "multi_turn":
            assert h == 1 and len(ctx) == 1
        if target == "last_turn":
            assert h == H
        for branch, response in zip(pairs.finals[i], pairs.responses[i]):
            assert branch.messages[: len(ctx)] == ctx and branch.messages[len(ctx)]["content"] == response
            assert responder in spy.who(ctx, response), ("response", ctx, response)
            said["response"] += 1
            said["continuation"] += spy.check(branch.messages, len(ctx) + 1, responder, "continuation")
            assert branch.horizon == H  # the pair's drawn horizon is the dialogue's
            if target == "last_turn":
                assert branch.turn == h  # nothing continued
            else:
                assert branch.done or branch.turn == H  # continued to the horizon
        if agent.config.continuations == 1:  # Q of each branch: the judge's score at the end of that branch
            assert pairs.returns[i].tolist() == [b.scores[-1] for b in pairs.finals[i]]
    if rollin is not None:
        assert said["rollin"] > 0
    if target == "last_turn":
        assert said["continuation"] == 0
    else:
        assert said["continuation"] > 0
    # the trained pairs are the collected ones, with their returns; the stored log-probabilities are the anchor's
    d = batch.data
    for ctx, resp, ret in zip(d["contexts"], d["responses"], d["returns"].tolist()):
        contexts, responses = agent.responses(pairs)
        match = [pairs.returns[k] for k in range(len(contexts)) if contexts[k] == ctx and tuple(responses[k]) == tuple(resp)]
        assert any(np.allclose(ret, q, atol=1e-6) for q in match), (ret, match)
    anchor = agent.policy if type(agent).anchor == "pi_t" else agent.ref_policy
    other = agent.ref_policy if anchor is agent.policy else agent.policy
    old = torch.cat([d["old_a"], d["old_b"]])
    assert torch.allclose(old, anchor.sequence_logprobs_nograd(d["enc"]), atol=1e-5)
    assert not torch.allclose(old, other.sequence_logprobs_nograd(d["enc"]), atol=1e-5)


@pytest.mark.parametrize("label", list(ROW_SPEAKERS))
def test_each_row_rolls_in_responds_and_continues_with_its_own_speakers(label, tiny_reference, monkeypatch):
    rollin, responder, target = ROW_SPEAKERS[label]
    agent, batch, spy, seen = collect_with_speakers(label, tiny_reference, monkeypatch)
    if target == "dialogues":  # PPO and SFT: whole dialogues from the opening
        states = seen["dialogues"]
        assert "pairs" not in seen and len(states) == 16
        assert sum(spy.check(s.messages, 0, responder, "dialogue") for s in states) >= 16
        assert spy.speakers() == {responder}
        return
    assert "dialogues" not in seen
    c = agent.config
    assert (WHO[c.rollin], WHO[c.responder], c.target) == (rollin, responder, target)
    check_pairs(agent, batch, spy, seen["pairs"][0], rollin, responder, target)


@pytest.mark.slow
@pytest.mark.parametrize("rollin, responder, target", [
    (r, s, t) for t in ("relative_future", "last_turn") for r in ("current", "reference", "offline")
    for s in ("current", "reference")] + [("none", s, "multi_turn") for s in ("current", "reference")])
def test_every_rollin_and_responder_configuration_speaks_as_declared(rollin, responder, target, tiny_reference,
                                                                     monkeypatch):
    for agent_name in ("refuel", "dpo"):
        agent, batch, spy, seen = collect_with_speakers(
            agent_name, tiny_reference, monkeypatch, {"rollin": rollin, "responder": responder, "target": target})
        check_pairs(agent, batch, spy, seen["pairs"][0], WHO[rollin], WHO[responder], target)


def test_pair_turn_probabilities_are_the_law_of_the_draw():
    from agents.engine.rollout import draw_pair_turns, pair_turn_probabilities

    def same(got, expected):
        assert [(H, h) for H, h, _ in got] == [(H, h) for H, h, _ in expected]
        assert [p for _, _, p in got] == pytest.approx([p for _, _, p in expected])

    rf = pair_turn_probabilities(3, "relative_future")
    same(rf, [(1, 1, 1 / 3), (2, 1, 1 / 6), (2, 2, 1 / 6), (3, 1, 1 / 9), (3, 2, 1 / 9), (3, 3, 1 / 9)])
    same(pair_turn_probabilities(3, "last_turn"), [(1, 1, 1 / 3), (2, 2, 1 / 3), (3, 3, 1 / 3)])
    same(pair_turn_probabilities(3, "multi_turn"), [(1, 1, 1 / 3), (2, 1, 1 / 3), (3, 1, 1 / 3)])
    H, h = draw_pair_turns(np.random.default_rng(0), 30000, 3, "relative_future")
    for (a, b, p) in rf:
        assert np.mean((H == a) & (h == b)) == pytest.approx(p, abs=0.01)


def test_continuation_copies_share_fresh_user_and_judge_randomness_within_a_pair(env):
    from agents.engine.rollout import RolloutEngine

    eng = RolloutEngine(env)
    roots = eng.machine.new_states([1, 2])
    branches = [b for r in roots for b in eng.machine.branch(r, 2)]
    out = eng.continuation_copies(branches, 4, seed=5)
    assert len(out) == 16 and all(out[4 * j] is b for j, b in enumerate(branches))  # copy 0 is the branch itself

    def draws(s):
        return s.user_rng.random(), s.judge_rng.random()

    d = [draws(s) for s in out]  # order: pair, branch, copy
    for pair in range(2):
        for c in (1, 2, 3):
            a, b = d[8 * pair + c], d[8 * pair + 4 + c]
            assert a == b  # both branches of a pair: the same fresh randomness (common random numbers)
            assert a[0] != a[1]  # the user's and the judge's streams differ
    assert len({d[i] for i in (1, 2, 3, 9, 10, 11)}) == 6  # fresh for every copy and every pair
    assert out[1].messages == branches[0].messages and out[1] is not branches[0]


def test_a_pair_update_by_hand_on_one_minibatch(env, tiny_reference):
    """One epoch, one minibatch: the update's forward pass sees pi_t itself, so REFUEL's loss is the mean of
    (eta (Q(a) - Q(a')))^2 over the pairs; an empty batch is skipped and counted."""
    import copy

    import torch

    from agents.base import Batch
    from agents.engine.policy import Policy

    agent = make_agent("refuel", policy=Policy(copy.deepcopy(tiny_reference.model), tiny_reference.tokenizer),
                       batch_size=12, seed=2, epochs=1, minibatch_size=64, eta=2.0, temperature=0.7)
    batch = agent.collect(env)
    n, r = len(batch), batch.data["returns"]
    expected = float(((2.0 * (r[:, 0] - r[:, 1])) ** 2).mean())
    assert n > 0 and expected > 0, "no pair with a return difference: the test proves nothing"
    out = agent.update(batch)
    assert out["loss"] == pytest.approx(expected, rel=1e-4)
    assert out["pairs"] == n and out["skipped_nonfinite_loss"] == 0
    for k in (1, 2):
        empty = agent.update(Batch({}, {}))
        assert np.isnan(empty["loss"]) and empty["pairs"] == 0 and empty["skipped_empty_batches"] == k
    dpo = make_agent("dpo", policy=Policy(copy.deepcopy(tiny_reference.model), tiny_reference.tokenizer),
                     rollin="current", seed=0, epochs=1, minibatch_size=64)
    d = dict(batch.data, returns=torch.tensor([[1.0, 0.0]] * n))  # a preference for a in every pair
    dpo_out = dpo.update(Batch(d, batch.stats))
    assert set(dpo_out) >= {"loss", "pairs", "reward_accuracy", "skipped_nonfinite_loss"}  # the loss's own metrics too
    assert 0.0 <= dpo_out["reward_accuracy"] <= 1.0


def test_the_engine_counts_its_env_steps_and_refuses_contradictory_continuations(env, monkeypatch):
    import time

    from agents.engine.rollout import RolloutEngine
    from refuel_env.tasks.guess_item_players import ScriptedQuestioner

    eng = RolloutEngine(env)
    calls, spent = [], [0.0]
    real = eng.machine.step

    def step(states, actions, *a):
        t = time.perf_counter()
        out = real(states, actions, *a)
        spent[0] += time.perf_counter() - t
        calls.append(len(states))
        return out

    monkeypatch.setattr(eng.machine, "step", step)
    speaker = ScriptedQuestioner(eng.machine.task, "informative", seed=0)
    t0 = time.perf_counter()
    roots = 0
    for seed in (0, 1):  # two batches: the counts add up
        pairs, dropped = eng.pairs(6, np.random.default_rng(seed), rollin=speaker, responder=speaker,
                                   target="relative_future", params=SamplingParams())
        roots += 6 - dropped["ended_before_branch"]
    assert eng.stats["env_steps"] == len(calls) > 2
    assert spent[0] <= eng.stats["env_seconds"] <= time.perf_counter() - t0
    assert eng.stats["dialogues"] == 12 + roots  # one continuation per branch by default: no extra copies
    seen = []
    eng.dialogues(2, speaker, np.random.default_rng(1), SamplingParams(), on_turn=lambda live: seen.append(list(live)))
    assert seen and all(len(live) >= 1 and all(hasattr(s, "messages") for s in live) for live in seen)
    for k, target in ((0, "relative_future"), (2, "last_turn"), (2, "multi_turn")):
        with pytest.raises(ValueError, match="continuations must be"):
            eng.pairs(2, np.random.default_rng(0), speaker, speaker, target, SamplingParams(), continuations=k)


def test_pair_collect_keeps_distinct_finite_pairs_and_counts_the_rest(env, tiny_reference, monkeypatch):
    """What collect keeps of the engine's pairs: identical responses and non-finite returns are dropped (and counted)
    for every pair loss; ties only for preference losses (DPO). The returns stay with their pairs."""
    import copy

    from agents.engine.policy import Policy
    from agents.engine.rollout import PairData, RolloutEngine

    ctx = [{"role": "user", "content": "I am thinking of one of these animals: whale, horse. Ask me questions."}]
    rows = [("Is it big?", "Is it small?", [1.0, 0.0]),
            ("Is it big?", "Is it big?", [1.0, 0.0]),  # identical responses: no signal
            ("Is it red?", "Is it blue?", [0.5, 0.5]),  # a tie: no preference
            ("Is it wet?", "Is it dry?", [float("nan"), 1.0]),  # a non-finite return
            ("Is it a cat?", "Is it a dog?", [0.0, 1.0])]
    fake = PairData(contexts=[ctx] * 5, responses=[(a, b) for a, b, _ in rows],
                    returns=np.array([q for *_, q in rows]), turns=np.ones(5, int), horizons=np.full(5, 2),
                    drawn_turns=np.ones(5, int))
    monkeypatch.setattr(RolloutEngine, "pairs", lambda self, *a, **k: (fake, {"ended_before_branch": 2}))
    for name, kept in (("refuel", [0, 2, 4]), ("dpo", [0, 4])):
        agent = make_agent(name, policy=tiny_reference, rollin="current", batch_size=5, seed=0)
        b = agent.collect(env)
        assert b.data["responses"] == [fake.responses[i] for i in kept], name
        assert b.data["returns"].tolist() == [rows[i][2] for i in kept]
        s = b.stats
        assert s["pairs"] == s["examples"] == len(kept) and s["ended_before_branch"] == 2
        assert s["identical_responses"] == 1 and s["nonfinite_returns"] == 1 and s["template_errors"] == 0
        assert s["unusable_pairs"] == (1 if name == "dpo" else 0)
    broken = copy.deepcopy(tiny_reference.tokenizer)  # renders the last message differently: every pair refused
    broken.chat_template = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\nLAST {{ m['content'] }}"
                            "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    agent = make_agent("refuel", policy=Policy(copy.deepcopy(tiny_reference.model), broken), batch_size=5, seed=0)
    b = agent.collect(env)
    assert len(b) == 0 and b.stats["template_errors"] == 3 and b.stats["pairs"] == 0


def test_offline_roll_ins_are_seeded_by_the_agent(env, tiny_reference):
    def contexts():
        agent = make_agent("rebel", policy=tiny_reference, rollin="offline", batch_size=6, seed=8)
        return agent.collect(env).data["contexts"]

    assert contexts() == contexts()
