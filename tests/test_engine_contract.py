"""The rollout engine's contract (counters, splits, seed streams, multi-process blocks, pairs that never branch),
pair collection's statistics, the chat encoder's defaults and padding, and the turn masks PPO and SFT score with.

Speakers here are scripted (an object with ``act``, or a :class:`Policy` subclass that answers from a script and
records the sampling seed of each call), so no test but the PPO/SFT/collect ones runs a model; those reuse the
session's ``tiny_reference``. A multi-process launch is played by a :class:`Distributed` whose other processes'
row counts are scripted.
"""

from __future__ import annotations

import copy
import math
import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import refuel_env  # noqa: F401
from agents.algorithms.pairs import PairConfig, signal_by_turn
from agents.base import make_agent
from agents.engine.chat import ChatEncoder, EncodedTurns, TemplateError
from agents.engine.distributed import Distributed
from agents.engine.policy import Generated, Policy
from agents.engine.rollout import PairData, RolloutEngine, draw_pair_turns
from refuel_env import SamplingParams
from refuel_env.core import DialogueMachine

PARAMS = SamplingParams()


# ------------------------------------------------------------------------------------------------- helpers
class Talker:
    """A scripted speaker (``act``): says ``texts[i % len(texts)]`` to the i-th conversation of each call."""

    def __init__(self, *texts: str):
        self.texts, self.calls = texts or ("Is it a mammal?",), []

    def act(self, conversations):
        self.calls.append(len(conversations))
        return [self.texts[i % len(self.texts)] for i in range(len(conversations))]


class ScriptedPolicy(Policy):
    """A Policy (the engine hands it a sampling seed) that answers from a script: ``tokens`` tokens a row, ``pause``
    seconds a call; records the seed of every call (in ``seeds``, and in the shared ``events`` list if given)."""

    def __init__(self, text="Is it a mammal?", tokens=3, pause=0.0, events=None):
        self.text, self.tokens, self.pause, self.events, self.seeds = text, tokens, pause, events, []

    def generate(self, conversations, params, seed=None):
        self.seeds.append(seed)
        if self.events is not None:
            self.events.append(("generate", seed))
        if self.pause:
            time.sleep(self.pause)
        return Generated([self.text] * len(conversations), self.tokens * len(conversations))


class LastOfTwo(Distributed):
    """Process 1 of a launch of 2; the other process's rows in each generation call are scripted: ``other(k)`` (k: this
    process's rows) or the next entry of a list (0 once it is used up)."""

    enabled, rank, world_size = True, 1, 2

    def __init__(self, other):
        self.other, self.befores = other, []

    def offset(self, k):
        c = self.other(k) if callable(self.other) else (self.other.pop(0) if self.other else 0)
        self.befores.append(c)
        return c, c + k


def engine(machine=None, dist=None) -> RolloutEngine:
    return RolloutEngine(SimpleNamespace(machine=machine or DialogueMachine(max_turns=3)), dist=dist)


def truncating_machine() -> DialogueMachine:
    """A dialogue whose first assistant turn is a 100-character message is truncated right after it."""
    return DialogueMachine(max_turns=3, max_message_chars=100, max_total_chars=260)


def seed_where(ok, n, hmax, target):
    """The first seed whose drawn (horizons, turns) of n pairs satisfy ``ok`` (pairs() draws them first)."""
    return next(s for s in range(1000) if ok(*draw_pair_turns(np.random.default_rng(s), n, hmax, target)))


def replay(seed, n, hmax, target):
    """A generator in the state the engine's is in after pairs() drew the turns and the n episode seeds."""
    rng = np.random.default_rng(seed)
    draw_pair_turns(rng, n, hmax, target)
    for _ in range(n):
        rng.integers(2**62)
    return rng


def state_key(s):
    return s.goal, s.horizon, s.messages


# ------------------------------------------------------------------------------------------------- counters
def test_a_fresh_engine_has_counted_nothing():
    assert engine().stats == {"dialogues": 0, "tokens_generated": 0, "generate_calls": 0, "generate_seconds": 0.0,
                              "env_seconds": 0.0, "env_steps": 0}


def test_speak_counts_calls_tokens_and_time_and_cuts_replies_to_the_message_limit():
    eng = engine()
    states = eng.new_states(3, np.random.default_rng(0))
    pol = ScriptedPolicy(tokens=4, pause=0.02)
    assert eng.speak(pol, states[:2], 11, PARAMS) == ["Is it a mammal?"] * 2
    eng.speak(pol, states, 12, PARAMS)
    assert pol.seeds == [11, 12]
    assert eng.stats["generate_calls"] == 2 and eng.stats["tokens_generated"] == 4 * (2 + 3)
    long = eng.speak(Talker("a" * 5000), states, 13, PARAMS)  # a scripted speaker: no tokens generated
    assert [len(t) for t in long] == [eng.machine.max_message_chars] * 3 == [1024] * 3
    assert eng.stats["generate_calls"] == 3 and eng.stats["tokens_generated"] == 20
    # the time of every call adds up (two pauses of 0.02 s), and is a duration, not a clock reading
    assert 0.04 <= eng.stats["generate_seconds"] < 5.0


# ------------------------------------------------------------------------------------------------- dialogues
def test_new_states_are_drawn_from_the_train_split_unless_asked_and_eval_ones_differ():
    eng = engine()
    ref = np.random.default_rng(3)
    seeds = [int(ref.integers(2**62)) for _ in range(6)]
    train = eng.new_states(6, np.random.default_rng(3))
    held_out = eng.new_states(6, np.random.default_rng(3), "eval")
    m = eng.machine
    assert [state_key(s) for s in train] == [state_key(s) for s in m.new_states(seeds, {"split": "train"})]
    assert [state_key(s) for s in held_out] == [state_key(s) for s in m.new_states(seeds, {"split": "eval"})]
    assert [state_key(s) for s in train] != [state_key(s) for s in held_out]
    assert eng.stats["dialogues"] == 12


def test_a_process_starts_its_own_block_of_the_dialogues_with_their_horizons():
    horizons = [1, 2, 3, 1]
    one = engine().new_states(4, np.random.default_rng(5), horizons=horizons)
    eng = engine(dist=LastOfTwo([]))
    mine = eng.new_states(4, np.random.default_rng(5), horizons=horizons)
    assert [state_key(s) for s in mine] == [state_key(s) for s in one[2:]]  # the block [2, 4) of the same draws
    assert [s.horizon for s in mine] == [3, 1]
    assert eng.stats["dialogues"] == 2  # its own dialogues only


def test_advance_samples_each_turn_with_the_shared_seed_after_the_rows_of_earlier_processes():
    """Row j of a call is sampled with seed + j over the rows of all processes; a process whose dialogues are done
    keeps drawing the turn seeds while another process still has live dialogues, so the generators stay in step."""
    m = DialogueMachine(max_turns=3)
    states = m.new_states([5, 6], per_dialogue=[{"horizon": 1}, {"horizon": 1}])
    dist = LastOfTwo([3, 2, 1, 0])  # the other process: 3 rows, then 2, then 1 (after this one is done), then none
    eng = engine(m, dist)
    pol = ScriptedPolicy()
    rng = np.random.default_rng(9)
    eng.advance(states, pol, rng, PARAMS)
    ref = np.random.default_rng(9)
    drawn = [int(ref.integers(2**31)) for _ in range(3)]
    assert pol.seeds == [drawn[0] + 3]  # one call of this process's 2 rows, after the other process's 3
    assert all(s.done and s.turn == 1 for s in states)
    assert rng.bit_generator.state == ref.bit_generator.state  # 3 turn seeds drawn, as in the other process
    assert eng.stats["generate_calls"] == 1 and eng.stats["env_steps"] == 1


# ------------------------------------------------------------------------------------------------- pairs
def test_draw_pair_turns_are_integers_also_for_no_pairs():
    for target in ("relative_future", "last_turn", "multi_turn"):
        for n in (0, 5):
            horizons, turns = draw_pair_turns(np.random.default_rng(0), n, 4, target)
            assert horizons.shape == turns.shape == (n,) and turns.dtype == horizons.dtype and turns.dtype.kind == "i"
            assert np.all((1 <= turns) & (turns <= horizons))


def test_every_sampling_seed_of_pairs_is_the_next_draw_of_the_engines_generator():
    """Roll-in turns, the two responses, the continuation copies' reseeding and the continuations: each takes the next
    ``integers(2**31)`` of the generator, after the turns and the episode seeds (what every process draws alike)."""
    n, events = 4, []
    eng = engine()
    real = eng.continuation_copies

    def copies(branches, k, seed):
        events.append(("copies", seed))
        return real(branches, k, seed)

    eng.continuation_copies = copies
    seed = seed_where(lambda H, h: h.max() >= 2 and (h < H).any(), n, 3, "relative_future")
    pol = ScriptedPolicy(events=events)
    pairs, dropped = eng.pairs(n, np.random.default_rng(seed), pol, pol, "relative_future", PARAMS, continuations=2)
    ref = replay(seed, n, 3, "relative_future")
    assert [s for _, s in events] == [int(ref.integers(2**31)) for _ in events]
    kinds = [k for k, _ in events]
    assert kinds.count("copies") == 1 and kinds.count("generate") >= 3  # roll-in, responses, continuation
    roots = len(pairs.contexts)
    assert roots == n - dropped["ended_before_branch"] == n  # nothing ends early here
    assert eng.stats["dialogues"] == n + roots + 2 * roots  # a second branch per pair, one more future per branch
    assert pairs.returns.shape == (roots, 2)


def test_continuations_average_two_futures_of_each_branch():
    eng = engine()
    seen = []
    real = eng.continuation_copies
    eng.continuation_copies = lambda branches, k, seed: seen.append(k) or real(branches, k, seed)
    pairs, _ = eng.pairs(3, np.random.default_rng(1), Talker(), Talker(), "relative_future", PARAMS, continuations=2)
    assert seen == [2] and eng.stats["dialogues"] == 3 + 3 + 6
    assert np.all(np.isin(pairs.returns, [0.0, 0.5, 1.0]))


def test_a_process_samples_its_responses_after_the_rows_of_the_processes_before_it():
    n = 4
    seed = seed_where(lambda H, h: h[2:].max() >= 2, n, 3, "last_turn")
    dist = LastOfTwo(lambda k: 3 if k else 0)  # the other process: 3 rows in every call this one has rows in
    eng = engine(dist=dist)
    rollin, responder = ScriptedPolicy(), ScriptedPolicy("My guess is whale.")
    pairs, dropped = eng.pairs(n, np.random.default_rng(seed), rollin, responder, "last_turn", PARAMS)
    ref = replay(seed, n, 3, "last_turn")
    drawn = [int(ref.integers(2**31)) for _ in range(len(rollin.seeds) + 1)]
    assert rollin.seeds and rollin.seeds == [d + 3 for d in drawn[:-1]]
    assert responder.seeds == [drawn[-1] + 3]
    assert len(pairs.contexts) == 2 and dropped == {"ended_before_branch": 0}
    assert list(pairs.drawn_turns) == list(draw_pair_turns(np.random.default_rng(seed), n, 3, "last_turn")[1][2:])


def check_empty(pairs: PairData, drawn):
    assert pairs.contexts == [] and pairs.responses == [] and pairs.finals == []
    assert pairs.returns.shape == (0, 2) and pairs.returns.dtype.kind == "f"
    assert pairs.turns.shape == pairs.horizons.shape == (0,)
    assert pairs.turns.dtype.kind == pairs.horizons.dtype.kind == "i"
    assert list(pairs.drawn_turns) == list(drawn) and pairs.drawn_turns.dtype.kind == "i"


@pytest.mark.parametrize("target", ["relative_future", "last_turn"])
def test_pairs_of_dialogues_that_all_end_before_their_branching_turn_are_empty_and_well_formed(target):
    n = 3
    seed = seed_where(lambda H, h: h.min() >= 2, n, 3, target)
    drawn = draw_pair_turns(np.random.default_rng(seed), n, 3, target)[1]
    eng = engine(truncating_machine())
    responder = Talker()
    pairs, dropped = eng.pairs(n, np.random.default_rng(seed), Talker("x" * 100), responder, target, PARAMS)
    check_empty(pairs, drawn)
    assert dropped == {"ended_before_branch": n} and responder.calls == []
    assert signal_by_turn(pairs, []) == {k: v for h in np.unique(drawn) for k, v in
                                         ((f"turn{h}/drawn", int((drawn == h).sum())), (f"turn{h}/kept", 0),
                                          (f"turn{h}/signal", 0))}


def test_a_process_without_pairs_while_another_has_some_returns_empty_pairs_and_never_asks_its_responder():
    """Under a launch, the process whose dialogue ended before branching takes part in the call of the other
    process's responses (it draws the seed) but has nothing to sample or score."""
    n = 2
    seed = seed_where(lambda H, h: h[1] >= 2, n, 3, "last_turn")  # this process's block is dialogue 1
    drawn = draw_pair_turns(np.random.default_rng(seed), n, 3, "last_turn")[1]
    dist = LastOfTwo([1] * (int(drawn[1]) - 1) + [0, 2])  # roll-in turns beside the other's 1 row; then its 2 branches
    eng = engine(truncating_machine(), dist)
    responder = Talker()
    rng = np.random.default_rng(seed)
    pairs, dropped = eng.pairs(n, rng, Talker("x" * 100), responder, "last_turn", PARAMS)
    check_empty(pairs, drawn[1:])
    assert dropped == {"ended_before_branch": 1} and responder.calls == []
    assert eng.stats["generate_calls"] == 1  # the roll-in turn only
    ref = replay(seed, n, 3, "last_turn")
    ref.integers(2**31)  # the roll-in turn's seed (the dialogue is truncated after it)
    ref.integers(2**31)  # the responses' seed, drawn with the other process
    assert rng.bit_generator.state == ref.bit_generator.state


# ------------------------------------------------------------------------------------------------- pair statistics
def test_signal_by_turn_counts_drawn_kept_and_signalling_pairs_per_turn():
    pairs = PairData(contexts=[[]] * 4, responses=[("a", "b")] * 4,
                     returns=np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 1.0]]),
                     turns=np.array([1, 2, 2, 3]), horizons=np.array([1, 2, 3, 3]),
                     drawn_turns=np.array([1, 2, 2, 3, 3]))
    out = signal_by_turn(pairs, [0, 1, 2])  # pair 3 (turn 3) not kept
    assert out == {"turn1/drawn": 1, "turn1/kept": 1, "turn1/signal": 1,
                   "turn2/drawn": 2, "turn2/kept": 2, "turn2/signal": 1,  # pair 1 is a tie
                   "turn3/drawn": 2, "turn3/kept": 0, "turn3/signal": 0}
    assert all(type(v) is int for v in out.values())
    none = signal_by_turn(pairs, [])
    assert none == {"turn1/drawn": 1, "turn1/kept": 0, "turn1/signal": 0, "turn2/drawn": 2, "turn2/kept": 0,
                    "turn2/signal": 0, "turn3/drawn": 2, "turn3/kept": 0, "turn3/signal": 0}
    assert all(type(v) is int for v in none.values())


def test_two_continuations_need_the_relative_future_target():
    with pytest.raises(ValueError, match="needs target='relative_future'"):
        PairConfig(target="last_turn", rollin="reference", continuations=2)
    assert PairConfig(continuations=2).continuations == 2


def scripted_pair_agent(tiny_reference, monkeypatch, rollin_speaker, responder_speaker, **options):
    agent = make_agent("rebel", policy=tiny_reference, ref_policy=tiny_reference, **options)
    monkeypatch.setattr(agent, "speaker", lambda which, task: rollin_speaker if which == options.get("rollin")
                        else responder_speaker)
    return agent


def test_a_collect_without_a_single_pair_keeps_the_drawn_pairs_and_reports_nan(tiny_reference, monkeypatch):
    n = 2
    seed = seed_where(lambda H, h: h.min() >= 2, n, 3, "last_turn")
    drawn = draw_pair_turns(np.random.default_rng(seed), n, 3, "last_turn")[1]
    responder = Talker()
    agent = scripted_pair_agent(tiny_reference, monkeypatch, Talker("x" * 100), responder, rollin="reference",
                                target="last_turn", batch_size=n, seed=seed)
    batch = agent.collect(SimpleNamespace(machine=truncating_machine()))
    assert len(batch) == 0 and list(batch.data) == ["pairs"] and responder.calls == []
    check_empty(batch.data["pairs"], drawn)
    s = batch.stats
    assert s["pairs"] == 0 and s["ended_before_branch"] == n and math.isnan(s["mean_return"])
    assert all(s[f"turn{h}/kept"] == 0 == s[f"turn{h}/signal"] for h in np.unique(drawn))


def test_collected_pairs_carry_float32_returns_of_their_branches(tiny_reference, monkeypatch):
    talker = Talker("Is it a mammal?", "Does it live in water?")  # a and b of each pair differ
    agent = scripted_pair_agent(tiny_reference, monkeypatch, talker, talker, rollin="current", batch_size=4, seed=0)
    env = gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=3)
    batch = agent.collect(env)
    d = batch.data
    assert len(batch) == 4 and d["returns"].dtype == torch.float32 and d["returns"].shape == (4, 2)
    assert d["old_a"].shape == d["old_b"].shape == (4,)
    assert sum(batch.stats[k] for k in batch.stats if k.endswith("/kept")) == 4


# ------------------------------------------------------------------------------------------------- chat encoding
def tokenizer(tiny_reference):
    return copy.deepcopy(tiny_reference.tokenizer)


def test_a_chat_encoder_is_named_policy_unless_told(tiny_reference):
    tok = tokenizer(tiny_reference)
    assert ChatEncoder(tok).name == "policy" and ChatEncoder(tok, "pi_ref").name == "pi_ref"


def test_a_tokenizer_without_a_chat_template_attribute_is_refused():
    with pytest.raises(TemplateError, match="no chat template"):
        ChatEncoder(SimpleNamespace(pad_token_id=0, eos_token="</s>"))


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_token_and_one_with_keeps_it(tiny_reference):
    tok = tokenizer(tiny_reference)
    tok.pad_token = None
    assert tok.pad_token_id is None
    ChatEncoder(tok)
    assert tok.pad_token == tok.eos_token and tok.pad_token_id == tok.eos_token_id
    own = SimpleNamespace(chat_template="t", pad_token="<pad>", pad_token_id=5, eos_token="</s>")
    ChatEncoder(own)
    assert own.pad_token == "<pad>"


def test_padding_uses_the_pad_token_for_ids_and_zero_for_both_masks():
    chat = ChatEncoder(SimpleNamespace(chat_template="t", pad_token_id=7))
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    enc = chat.pad(seqs, [torch.tensor([0, 1, 1]), torch.tensor([1])])
    assert enc.input_ids.tolist() == [[1, 2, 3], [4, 7, 7]]
    assert enc.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert enc.turn_mask.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert enc.input_ids.dtype == enc.attention_mask.dtype == enc.turn_mask.dtype == torch.long


CTX = [{"role": "user", "content": "I am thinking of one of these animals: whale, horse, cat."}]


class TextByDefault:
    """A tokenizer stricter than Hugging Face's: its ``apply_chat_template`` renders text unless token ids are asked
    for, and takes the generation prompt as a bool only (a template may test ``add_generation_prompt is false``)."""

    def __init__(self, tok):
        self.tok, self.chat_template, self.pad_token_id = tok, tok.chat_template, tok.pad_token_id

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        if type(add_generation_prompt) is not bool:
            raise TypeError(f"add_generation_prompt must be a bool, got {add_generation_prompt!r}")
        return self.tok.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=add_generation_prompt)


def test_turn_spans_ask_the_template_for_token_ids_and_a_bool_generation_prompt(tiny_reference):
    msgs = CTX + [{"role": "assistant", "content": "Is it a mammal?"}, {"role": "user", "content": "Yes."},
                  {"role": "assistant", "content": "My guess is whale."}]
    strict = ChatEncoder(TextByDefault(tiny_reference.tokenizer))
    for k in (1, 3):
        ids, a, b = strict.turn_span(msgs, k)
        assert (ids, a, b) == tiny_reference.chat.turn_span(msgs, k) and all(type(i) is int for i in ids)


def test_select_trims_the_rows_to_the_widest_selected_one(tiny_reference):
    chat = tiny_reference.chat
    replies = ["Is it a mammal?", "Does it live in water, or does it live on land, or does it fly in the air?",
               "Is it big?"]
    enc = chat.encode_turns([CTX] * 3, replies)
    sub = enc.select(torch.tensor([0, 2]))
    alone = chat.encode_turns([CTX] * 2, [replies[0], replies[2]])
    assert sub.input_ids.shape[1] < enc.input_ids.shape[1]
    for a, b in ((sub.input_ids, alone.input_ids), (sub.attention_mask, alone.attention_mask),
                 (sub.turn_mask, alone.turn_mask)):
        assert torch.equal(a, b)


def test_encoded_turns_move_all_three_tensors_to_a_device(tiny_reference):
    enc = tiny_reference.chat.encode_turns([CTX], ["Is it a mammal?"])
    moved = enc.to("meta")
    assert isinstance(moved, EncodedTurns)
    for name in ("input_ids", "attention_mask", "turn_mask"):
        t = getattr(moved, name)
        assert t.device.type == "meta" and t.shape == getattr(enc, name).shape


# ------------------------------------------------------------------------------------------------- PPO and SFT
def test_ppo_stores_pi_old_log_probabilities_on_the_assistant_turns_only(tiny_reference):
    agent = make_agent("ppo", policy=Policy(copy.deepcopy(tiny_reference.model), tiny_reference.tokenizer),
                       ref_policy=tiny_reference, batch_size=2, seed=0, max_new_tokens=6)
    batch = agent.collect(gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=2))
    d = batch.data
    assert len(batch) == 2
    off = d["mask"] == 0
    assert off.any() and torch.all(d["old"][off] == 0)  # 0 off the turns
    assert torch.all(d["old"][~off] < 0)  # log-probabilities on them


def test_sft_update_runs_the_lm_head_on_the_assistant_turn_tokens_only(tiny_reference):
    agent = make_agent("sft", policy=Policy(copy.deepcopy(tiny_reference.model), tiny_reference.tokenizer),
                       batch_size=2, seed=0, epochs=1, minibatch_size=2)
    batch = agent.collect(gym.make_vec("RefuelDialogue-v0", num_envs=1, max_turns=2))
    rows = []
    head = agent.policy.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[:-1].numel()))
    try:
        out = agent.update(batch)
    finally:
        handle.remove()
    enc = batch.data["enc"]
    assert math.isfinite(out["loss"])
    assert sum(rows) == int(enc.turn_mask[:, 1:].sum()) < enc.turn_mask[:, 1:].numel()


def test_a_response_turn_is_marked_by_ones_exactly_over_its_tokens(tiny_reference):
    """The turn mask is 0/1: PPO counts a minibatch's tokens by summing it, and the losses weight by it."""
    chat = ChatEncoder(tokenizer(tiny_reference))
    context = [{"role": "user", "content": "Is it a mammal?"}]
    ids, mask = chat.turn_row(context, "Yes.")
    _, a, b = chat.turn_span(context + [{"role": "assistant", "content": "Yes."}], 1)
    assert mask.tolist() == [0] * a + [1] * (b - a) + [0] * (len(ids) - b)
    assert int(chat.encode_turns([context], ["Yes."]).turn_mask.sum()) == b - a


def test_the_offline_speaker_is_seeded_from_the_agents_own_generator(tiny_reference):
    """Offline roll-ins are reproducible: the behaviour policy gets a seed drawn from the agent's generator (not
    None, which would seed it from the operating system), so the same agent seed gives the same offline data."""
    seeds = []

    class Task:
        def offline_speaker(self, seed=None):
            seeds.append(seed)
            return SimpleNamespace(act=lambda conversations: ["Is it a mammal?"] * len(conversations))

    for _ in range(2):
        agent = make_agent("rebel", policy=tiny_reference, ref_policy=tiny_reference, rollin="offline", seed=5)
        expected = int(copy.deepcopy(agent.rng).integers(2**31))
        agent.speaker("offline", Task())
        assert seeds[-1] == expected
    assert seeds[0] == seeds[1] and isinstance(seeds[0], int)
