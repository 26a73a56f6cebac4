"""LLM user, LLM judge, reward-model judge and the record/replay cache, on fake and tiny real back ends."""

import pickle
import zlib

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import refuel_env  # noqa: F401
from refuel_env import DialogueState, JudgeError, SamplingParams, UserSimulatorError
from refuel_env.backends import Generation, TransformersBackend
from refuel_env.cache import CachedBackend, CacheMiss
from refuel_env.env import RefuelDialogueEnv
from refuel_env.judges import LLMJudge, RewardModelJudge
from refuel_env.models import tiny_chat_model, train_chat_tokenizer
from refuel_env.users import PAPER_USER_PROMPT, LLMUser
from refuel_env.vector import RefuelVectorEnv

torch.set_num_threads(1)


class FakeBackend:
    """Deterministic in (conversation, seed); records every call."""

    name, model_id = "fake", "fake-model"

    def __init__(self, reply=None):
        self.calls, self.reply = [], reply

    def generate_with_tokens(self, conversations, params, seeds=None):
        self.calls.append((list(conversations), list(seeds) if seeds is not None else None))
        out = []
        for c, s in zip(conversations, seeds or [0] * len(conversations)):
            h = zlib.crc32((c[-1]["content"] + str(s)).encode())
            text = self.reply(c, s) if self.reply else f"Justification: curious.\nQuestion: q{h % 1000}?"
            out.append(Generation(text, token_ids=[1, 2, 3], prompt_tokens=len(c[-1]["content"]), completion_tokens=3))
        return out

    def generate(self, conversations, params, seeds=None):
        return [g.text for g in self.generate_with_tokens(conversations, params, seeds)]


class FakeJudgeBackend:
    """next_token_logprobs: 'Yes'/'A' is likelier for transcripts that contain 'good'."""

    name, model_id = "fake-judge", "fake-judge-model"

    def __init__(self, value=None, position_bias=0.0):
        self.calls, self.value, self.position_bias = 0, value, position_bias

    def generate(self, conversations, params, seeds=None):
        return ["7" for _ in conversations]

    def next_token_logprobs(self, conversations, candidates):
        self.calls += 1
        out = []
        for c in conversations:
            text = c[-1]["content"]
            if self.value is not None:
                out.append([self.value, 0.0])
            elif candidates[0] == "A":
                a, b = text.split("[Conversation B]")
                out.append([np.log(0.5) + 2.0 * ("good" in a) - 2.0 * ("good" in b) + self.position_bias, np.log(0.5)])
            else:
                out.append([1.0 if "good" in text else -1.0, 0.0])
        return np.array(out)


class NondeterministicBackend:
    name, model_id = "random", "random-model"
    rng = np.random.default_rng()

    def generate(self, conversations, params, seeds=None):
        return [f"Question: random {self.rng.integers(10**9)}?" for _ in conversations]


def chat_env(user_backend, judge_backend=None, **kw):
    kw.setdefault("horizon", "fixed")
    return RefuelDialogueEnv(task="open-chat-v0", task_kwargs={"max_turns": kw.pop("max_turns", 3)},
                             user="llm", judge="llm", user_kwargs={"backend": user_backend, **kw.pop("user_kwargs", {})},
                             judge_kwargs={"backend": judge_backend or FakeJudgeBackend()}, **kw)


# ------------------------------------------------------------------------------------------ LLM user
def test_llm_user_makes_one_batched_call_with_the_paper_prompt_and_per_dialogue_seeds():
    fake = FakeBackend()
    env = RefuelVectorEnv(num_envs=4, task="open-chat-v0", task_kwargs={"max_turns": 3}, horizon="fixed", user="llm",
                          judge="llm", user_kwargs={"backend": fake}, judge_kwargs={"backend": FakeJudgeBackend()})
    obs, _ = env.reset(seed=0)
    obs, rew, term, trunc, info = env.step(["Here is my good answer."] * 4)
    assert len(fake.calls) == 1 and len(fake.calls[0][0]) == 4  # ONE call for the batch
    prompts, seeds = fake.calls[0]
    assert len(set(seeds)) == 4
    opening = obs["messages"][0][0]["content"]
    text = prompts[0][0]["content"]
    assert prompts[0][0]["role"] == "user" and len(prompts[0]) == 1
    assert text.startswith(PAPER_USER_PROMPT) and f"### user: {opening}\n\n" in text
    assert "### assistant: Here is my good answer.\n\n" in text and text.rstrip().endswith("Question:")
    assert obs["messages"][0][-1]["role"] == "user" and obs["messages"][0][-1]["content"].startswith("q")
    assert info["cost"]["user_calls"].tolist() == [1] * 4 and info["cost"]["user_completion_tokens"].tolist() == [3] * 4


def test_llm_user_seeds_come_from_the_state_so_restoring_reproduces_the_reply():
    fake = FakeBackend()
    env = chat_env(fake)
    env.reset(seed=3)
    saved = env.get_state()
    o1 = env.step("First answer.")[0]
    env.reset(options={"state": saved})
    o2 = env.step("First answer.")[0]
    assert o1 == o2 and fake.calls[0][1] == fake.calls[1][1]
    o3 = env.step("Second answer.")[0]
    assert fake.calls[2][1] != fake.calls[1][1]  # the state's user_rng moved on
    assert o3["messages"][-1]["role"] == "user"


def test_swap_format_shows_the_dialogue_with_roles_swapped():
    user = LLMUser(FakeBackend(reply=lambda c, s: "  Next question?  "), format="swap")
    s = DialogueState("open-chat-v0", [{"role": "system", "content": "hidden"}, {"role": "user", "content": "Hi"},
                                       {"role": "assistant", "content": "Hello!"}], None, 3, turn=1)
    p = user.build_prompt(s)
    assert [m["role"] for m in p] == ["system", "assistant", "user"]
    assert p[1]["content"] == "Hi" and p[2]["content"] == "Hello!" and "hidden" not in str(p)
    (t,) = user.reply([s])
    assert t.content == "Next question?" and not t.end


def test_end_marker_ends_the_dialogue():
    env = chat_env(FakeBackend(reply=lambda c, s: "Question: Thanks, bye! [END]"), user_kwargs={"end_marker": "[END]"})
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step("Anything else?")
    assert term and info["ended_by_user"] and obs["messages"][-1]["content"] == "Thanks, bye!"


def test_a_failing_backend_propagates_and_the_step_is_rolled_back():
    class Broken(FakeBackend):
        def generate_with_tokens(self, *a, **k):
            raise TimeoutError("server timed out")

    env = chat_env(Broken())
    env.reset(seed=0)
    before = env.get_state()
    with pytest.raises(UserSimulatorError, match="server timed out"):
        env.step("An answer.")
    after = env.get_state()
    assert after.messages == before.messages and after.turn == before.turn
    assert after.user_rng.bit_generator.state == before.user_rng.bit_generator.state


def test_llm_user_needs_a_backend():
    with pytest.raises(ValueError, match="back end"):
        RefuelDialogueEnv(task="guess-item-v0", user="llm")


def test_llm_user_on_a_real_tiny_model_is_reproducible():
    model, tok = tiny_chat_model(seed=0)
    backend = TransformersBackend(model, tok)
    env = chat_env(backend, user_kwargs={"params": SamplingParams(max_new_tokens=6, temperature=1.0), "format": "swap"})
    env.reset(seed=1)
    s = env.get_state()
    a = env.step("Hello, how can I help?")[0]["messages"][-1]["content"]
    env.reset(options={"state": s})
    b = env.step("Hello, how can I help?")[0]["messages"][-1]["content"]
    assert a == b and isinstance(a, str) and a
    assert backend.stats["completion_tokens"] == 12  # two user turns of 6 tokens


# ------------------------------------------------------------------------------------------ LLM judge
def state(*turns, horizon=3):
    msgs = []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return DialogueState("open-chat-v0", msgs, None, horizon, turn=len(turns) // 2)


def test_pointwise_judge_is_p_yes_over_yes_and_no_with_provenance():
    judge = LLMJudge(FakeJudgeBackend())
    good, bad = state("Q?", "A good answer."), state("Q?", "A bad answer.")
    sg, sb = judge.score([good, bad])
    assert sg.value == pytest.approx(1 / (1 + np.exp(-1.0))) and sb.value == pytest.approx(1 / (1 + np.exp(1.0)))
    assert sg.components["p_yes"] == sg.value
    assert sg.provenance["model"] == "fake-judge-model" and sg.provenance["method"] == "logprob"
    assert sg.provenance["mode"] == "pointwise" and len(sg.provenance["prompt_sha256"]) == 16
    assert "A good answer." in judge.pointwise_prompt(good)[0]["content"]


def test_pairwise_compare_swaps_positions_and_cancels_position_bias():
    good, bad = state("Q?", "A good answer."), state("Q?", "A bad answer.")
    biased = LLMJudge(FakeJudgeBackend(position_bias=3.0), mode="pairwise")
    p_gb, p_bg = biased.compare([good, bad], [bad, good])
    assert p_gb > 0.5 > p_bg and p_gb + p_bg == pytest.approx(1.0)
    # a judge that only ever prefers the first position has no preference once positions are swapped
    only_first = LLMJudge(FakeJudgeBackend(value=3.0), mode="pairwise")
    assert only_first.compare([good, bad], [bad, good]) == pytest.approx([0.5, 0.5])
    assert LLMJudge(FakeJudgeBackend(), mode="pointwise").compare([good, bad, good], [bad, good, good]) == [1.0, 0.0, 0.5]


def test_nan_judge_raises_and_the_env_rolls_back():
    judge = LLMJudge(FakeJudgeBackend(value=float("nan")))
    with pytest.raises(ValueError, match="non-finite"):
        judge.score([state("Q?", "A.")])
    env = chat_env(FakeBackend(), FakeJudgeBackend(value=float("nan")))
    env.reset(seed=0)
    n = len(env.get_state().messages)
    with pytest.raises(JudgeError, match="non-finite"):
        env.step("An answer.")
    assert len(env.get_state().messages) == n


def test_generate_fallback_parses_a_rating_or_fails_clearly():
    class Rater:
        model_id = "rater"

        def __init__(self, text):
            self.text = text

        def generate(self, conversations, params, seeds=None):
            return [self.text] * len(conversations)

    (s,) = LLMJudge(Rater("I would say 7/10.")).score([state("Q?", "A.")])
    assert s.value == pytest.approx(6 / 9) and s.provenance["method"] == "generate"
    with pytest.raises(ValueError, match="on_parse_error"):
        LLMJudge(Rater("no idea")).score([state("Q?", "A.")])
    (s,) = LLMJudge(Rater("no idea"), on_parse_error=0.0).score([state("Q?", "A.")])
    assert s.value == 0.0 and s.components["parse_failed"] == 1
    assert LLMJudge(Rater("A"), mode="pairwise").compare([state("Q?", "x")], [state("Q?", "y")]) == [0.5]
    with pytest.raises(ValueError, match="next_token_logprobs"):
        LLMJudge(Rater("A"), method="logprob")


def test_llm_judge_on_a_real_tiny_model_batches_consistently():
    model, tok = tiny_chat_model(seed=2)
    b = TransformersBackend(model, tok)
    judge = LLMJudge(b, mode="pairwise")
    states = [state("Q?", "short"), state("What is up?", "A longer answer here.", "More?", "Yes.")]
    both = [s.value for s in judge.score(states)]
    alone = [judge.score([s])[0].value for s in states]
    assert np.allclose(both, alone, atol=1e-5) and all(0 < v < 1 for v in both)
    p = judge.compare(states, states[::-1])
    assert p[0] + p[1] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ reward model
@pytest.fixture(scope="module")
def reward_model():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = train_chat_tokenizer(vocab_size=300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=64, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForSequenceClassification(cfg).eval(), tok


def test_reward_model_judge_is_batched_and_truncates_from_the_left(reward_model):
    model, tok = reward_model
    judge = RewardModelJudge(model, tok, max_length=40)
    states = [state("Q?", "short"), state("What is up?", "A longer answer.", "More?", "Sure."), state("Hi", "Hello")]
    batched = [s.value for s in judge.score(states)]
    single = [judge.score([s])[0].value for s in states]
    assert np.allclose(batched, single, atol=1e-5)
    long = state("word " * 60, "answer")
    (s,) = judge.score([long])
    assert s.components["truncated"] == 1 and s.provenance["truncation"] == "left" and s.provenance["max_length"] == 40
    ids = tok(tok.apply_chat_template(long.messages, tokenize=False), add_special_tokens=False)["input_ids"][-40:]
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert s.value == pytest.approx(want, abs=1e-5)
    a, b = judge.compare(states[:2], states[1:3]), RewardModelJudge(model, tok, max_length=40, compare_mode="bradley-terry").compare(states[:1], states[1:2])
    assert a == [float(batched[0] > batched[1]), float(batched[1] > batched[2])]
    assert b[0] == pytest.approx(1 / (1 + np.exp(batched[1] - batched[0])), abs=1e-5)


def test_reward_model_loads_without_remote_code_by_default(reward_model, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    model, tok = reward_model
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    seen = {}
    real = AutoModelForSequenceClassification.from_pretrained

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    judge = refuel_env.JUDGES.make("reward-model", name_or_path=str(tmp_path))
    assert seen["trust_remote_code"] is False
    assert judge.score([state("Q?", "A.")])[0].value == pytest.approx(RewardModelJudge(model, tok).score([state("Q?", "A.")])[0].value, abs=1e-5)


def test_reward_model_errors_are_clear(reward_model):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model, tok = reward_model
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=64, num_labels=3, pad_token_id=tok.pad_token_id,
                      id2label={0: "bad", 1: "ok", 2: "helpful"}, label2id={"bad": 0, "ok": 1, "helpful": 2})
    multi = LlamaForSequenceClassification(cfg).eval()
    with pytest.raises(ValueError, match="label="):
        RewardModelJudge(multi, tok).score([state("Q?", "A.")])
    (s,) = RewardModelJudge(multi, tok, label="helpful").score([state("Q?", "A.")])
    with torch.no_grad():
        ids = tok(tok.apply_chat_template(state("Q?", "A.").messages, tokenize=False), add_special_tokens=False)["input_ids"]
        assert s.value == pytest.approx(multi(input_ids=torch.tensor([ids])).logits[0, 2].item(), abs=1e-5)
    bare = train_chat_tokenizer(vocab_size=300)
    bare.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        RewardModelJudge(model, bare)
    with torch.no_grad():
        multi.score.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        RewardModelJudge(multi, tok, label=0).score([state("Q?", "A.")])


# ------------------------------------------------------------------------------------------ cache
def test_cache_records_replays_and_counts(tmp_path):
    fake = FakeBackend()
    path = tmp_path / "calls.sqlite"
    cached = CachedBackend(fake, path)
    convs = [[{"role": "user", "content": f"hi {i}"}] for i in range(3)]
    p = SamplingParams(max_new_tokens=5)
    first = cached.generate_with_tokens(convs, p, seeds=[1, 2, 3])
    assert cached.stats["misses"] == 3 and cached.stats["hits"] == 0 and len(fake.calls) == 1
    again = cached.generate(convs + [[{"role": "user", "content": "new"}]], p, seeds=[1, 2, 3, 4])
    assert again[:3] == [g.text for g in first] and cached.stats["hits"] == 3 and cached.stats["misses"] == 4
    assert len(fake.calls) == 2 and len(fake.calls[1][0]) == 1  # only the miss went to the back end
    assert cached.stats["completion_tokens"] == 7 * 3
    # another seed, other parameters: a different request
    cached.generate(convs[:1], p, seeds=[9])
    cached.generate(convs[:1], SamplingParams(max_new_tokens=6), seeds=[1])
    assert cached.stats["misses"] == 6
    # persisted: a new wrapper on the same file replays without calling the back end
    replay = CachedBackend(FakeBackend(reply=lambda c, s: "SHOULD NOT BE CALLED"), path, mode="replay")
    assert replay.generate(convs, p, seeds=[1, 2, 3]) == again[:3] and replay.stats["hits"] == 3
    with pytest.raises(CacheMiss, match="mode='replay'"):
        replay.generate(convs, p, seeds=[7, 8, 9])
    # without seeds nothing is cached
    cached.generate(convs, p)
    assert cached.stats["uncached"] == 3 and len(cached) == 6
    clone = pickle.loads(pickle.dumps(cached))
    assert clone.generate(convs, p, seeds=[1, 2, 3]) == again[:3]


def test_cache_of_next_token_logprobs(tmp_path):
    judge_backend = FakeJudgeBackend()
    cached = CachedBackend(judge_backend, tmp_path / "c.sqlite")
    assert hasattr(cached, "next_token_logprobs") and not hasattr(CachedBackend(FakeBackend(), tmp_path / "d.sqlite"), "next_token_logprobs")
    convs = [[{"role": "user", "content": "good"}], [{"role": "user", "content": "bad"}]]
    a = cached.next_token_logprobs(convs, ["Yes", "No"])
    b = cached.next_token_logprobs(convs, ["Yes", "No"])
    assert np.array_equal(a, b) and judge_backend.calls == 1 and cached.stats["hits"] == 2
    assert LLMJudge(cached).method == "logprob"


def test_cache_makes_a_nondeterministic_backend_pass_check_env(tmp_path):
    def make(backend):
        return chat_env(backend, max_turns=2, max_message_chars=200, max_total_chars=4000)

    with pytest.raises(AssertionError, match="[Dd]eterministic"):
        check_env(make(NondeterministicBackend()), skip_render_check=True)
    cached = CachedBackend(NondeterministicBackend(), tmp_path / "replay.sqlite")
    check_env(make(cached), skip_render_check=True)
    assert cached.stats["hits"] >= 1
