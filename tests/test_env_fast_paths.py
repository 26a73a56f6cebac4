"""The fast paths of the lean env step (issue #11, item 4) give exactly what the plain ones give.

- seeded generators: numpy's own ``default_rng`` states, bit for bit, from the vectorised SeedSequence hash;
- lazy generators, cheap state copies and the journal of a step: same draws as eager deep copies;
- the batched spaces of the vector env: equal to ``gymnasium.vector.utils.batch_space``'s, made fast;
- a golden transcript: seeded dialogues through every view give the very texts, rewards and infos of the
  base commit 6c4bebf (``benchmarks/replay_check.py`` compares thousands against that commit itself).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import pickle
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector.utils import batch_space

import refuel_env  # noqa: F401
from refuel_env import rng as R
from refuel_env.spaces import MessageText

ROOT = Path(__file__).resolve().parents[1]
# sha256 of benchmarks/replay_check.py's transcript of 60 dialogues, made with the base commit 6c4bebf (whose
# guess-item opening stated H: tell_horizon=True today)
GOLDEN_60 = "e4fc9295b932764ec20ae55c74c576e2248002ab0d0c6b8e8949d9a95ab3c7a5"
# the same with today's default opening (the paper's protocol: H not told), recorded when it was introduced
GOLDEN_60_PAPER = "2f68b90c49a0089a84aff7837269d61e8dfd611fd759e05de711046529df42c1"


def test_the_fast_seed_hash_is_numpys():
    assert R.FAST
    rng = np.random.default_rng(0)
    entropies = [[int(rng.integers(2**63))] + [int(x) for x in rng.integers(0, 3, int(rng.integers(0, 3)))]
                 for _ in range(500)] + [[0], [2**32], [2**64 - 1, 1], [2**32 - 1, 2**32 - 1, 5], [7, 0, 0]]
    want = [np.random.SeedSequence(e).generate_state(4, np.uint64) for e in entropies]
    assert all(np.array_equal(a, b) for a, b in zip(R.seed_states(entropies), want))
    assert all(np.array_equal(R.seed_state(e), w) for e, w in zip(entropies[:50], want))
    for g, e in zip(R.generators(entropies[:40]), entropies):
        assert g.bit_generator.state == np.random.default_rng(e).bit_generator.state
    for g, s in zip(R.seeded(list(range(10**6, 10**6 + 40))), range(10**6, 10**6 + 40)):
        assert g.integers(2**62) == np.random.default_rng(s).integers(2**62)
    assert R.generator([2**70, 1]).random() == np.random.default_rng([2**70, 1]).random()  # the plain path


def test_lazy_generators_and_state_copies_draw_the_same():
    machine = refuel_env.DialogueMachine(horizon="fixed", task_kwargs={"noise": 0.3})
    s = machine.new_state(123)
    assert type(s.__dict__["_judge_rng"]) is R.LazyRng  # a rule judge never builds its generator
    twin = copy.deepcopy(s)
    copies = [s.copy(), pickle.loads(pickle.dumps(s)), DialogueState_from(s)]
    draws = [x.user_rng.integers(10**9, size=4).tolist() for x in [s, twin] + copies]
    assert all(d == draws[0] for d in draws)
    assert draws[0] == np.random.default_rng([123, 1]).integers(10**9, size=4).tolist()
    s.user_rng.random()  # a built generator: its copy is an exact lazy copy
    c = s.copy()
    assert c.user_rng.bit_generator.state == s.user_rng.bit_generator.state and c.user_rng is not s.user_rng


def DialogueState_from(s):
    return refuel_env.DialogueState.from_dict(s.to_dict())


def test_a_failed_step_restores_built_and_unbuilt_generators():
    machine = refuel_env.DialogueMachine(horizon="fixed", task_kwargs={"noise": 0.3})
    states = machine.new_states([1, 2])
    states[0].user_rng.random()  # one built, one not
    before = [s.to_dict() for s in states]

    class Failing:
        def score(self, states):
            raise TimeoutError("judge down")

    good, machine.judge = machine.judge, Failing()
    with pytest.raises(refuel_env.JudgeError):
        machine.step(states, ["Is it a mammal?"] * 2)
    machine.judge = good
    assert [s.to_dict() for s in states] == before


def test_batched_spaces_equal_gymnasiums():
    vec = gym.make_vec("RefuelDialogue-v0", num_envs=5, max_message_chars=20, max_total_chars=60)
    want_obs = batch_space(vec.single_observation_space, 5)
    want_act = batch_space(vec.single_action_space, 5)
    assert vec.observation_space == want_obs and vec.action_space == want_act
    for space, want in ((vec.observation_space, want_obs), (vec.action_space, want_act)):
        space.seed(7)
        want.seed(7)
        assert repr(space.sample()) == repr(want.sample()) and repr(space.sample()) == repr(want.sample())
    assert isinstance(vec.action_space[0], MessageText)


def test_make_vec_is_fast():
    gym.make_vec("RefuelDialogue-v0", num_envs=64).close()  # imports and memo tables
    t0 = time.process_time()
    gym.make_vec("RefuelDialogue-v0", num_envs=64).close()
    assert time.process_time() - t0 < 0.5  # about 0.02 s; the bound leaves room for a busy machine


def _transcript_hash() -> str:
    spec = importlib.util.spec_from_file_location("replay_check", ROOT / "benchmarks" / "replay_check.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    out = io.StringIO()
    replay.worker(60, out)
    return hashlib.sha256("\n".join(out.getvalue().splitlines()).encode()).hexdigest()


def test_golden_transcript_of_the_base_commit(monkeypatch):
    from refuel_env.tasks.guess_item import GuessItemTask

    init = GuessItemTask.__init__

    def stated(self, *args, **kwargs):  # the base commit's opening told the policy H
        kwargs.setdefault("tell_horizon", True)
        init(self, *args, **kwargs)

    monkeypatch.setattr(GuessItemTask, "__init__", stated)
    assert _transcript_hash() == GOLDEN_60
    monkeypatch.setattr(GuessItemTask, "__init__", init)
    assert _transcript_hash() == GOLDEN_60_PAPER
