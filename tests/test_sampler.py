"""The transformers back end's sampler: seeded uniforms, the sampled distribution, the KV-cached loop against
``generate``, determinism and batch independence, stopping. Tiny models built from a config; seconds on a CPU."""

import numpy as np
import pytest
import torch

from refuel_env import SamplingParams
from refuel_env.backends import BackendError, TransformersBackend
from refuel_env.backends.decoding import BufferLayer, prefill_groups
from refuel_env.backends.sampling import sample_tokens, uniforms
from refuel_env.models import tiny_chat_model

torch.set_num_threads(1)


def conv(text, system=None):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


CONVS = [conv("Hello there, how are you?"), conv("Hi"), conv("What is the capital of France?", "be nice"),
         conv("a b c d e f g h i j k l m n o p"), conv("Hi")]


@pytest.fixture(scope="module")
def peaked():
    """A tiny random model whose next-token distributions are far from uniform (logits scaled up) and whose
    attention is sharp (queries and keys scaled up), so that positions and the cache matter to its outputs."""
    model, tok = tiny_chat_model(seed=0)
    with torch.no_grad():
        model.model.norm.weight.mul_(12.0)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    return model, tok


# ---------------------------------------------------------------------------------------- uniforms
def test_uniforms_are_a_function_of_seed_and_step_only():
    u = uniforms([3, 4, 5], 6)
    assert u.shape == (3, 6) and u.dtype == np.float64 and np.all((u >= 0) & (u < 1))
    assert np.array_equal(uniforms([5], 6)[0], u[2]) and np.array_equal(uniforms([4, 3], 2), u[[1, 0], :2])
    assert np.array_equal(uniforms([2**64 - 1, 0], 3), uniforms([2**64 - 1, 0], 3))
    big = uniforms(range(2000), 50)  # adjacent seeds, consecutive steps: uniform and uncorrelated
    assert abs(big.mean() - 0.5) < 0.005 and abs(big.var() - 1 / 12) < 0.002
    assert np.histogram(big, bins=10, range=(0, 1))[0].min() > 0.095 * big.size
    assert abs(np.corrcoef(big[:-1].ravel(), big[1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(big[:, :-1].ravel(), big[:, 1:].ravel())[0, 1]) < 0.01


def test_sample_tokens_follows_softmax_with_temperature_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(4000, 1)
    u = torch.from_numpy(uniforms(range(4000), 1)[:, 0])
    freq = np.bincount(sample_tokens(logits, u, 1.0).numpy(), minlength=4) / 4000
    assert np.allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.02)
    want = np.array([0.5, 0.3, 0.15, 0.05]) ** 2  # temperature 0.5 squares and renormalises
    assert np.allclose(np.bincount(sample_tokens(logits, u, 0.5).numpy(), minlength=4) / 4000, want / want.sum(), atol=0.02)
    picks = sample_tokens(logits, u, 1.0, top_p=0.7).numpy()  # 0.5 + 0.3 >= 0.7: the two most likely tokens
    assert set(picks) == {0, 1} and abs(np.mean(picks == 0) - 0.5 / 0.8) < 0.03
    assert sample_tokens(logits[:3], u[:3], 0.0).tolist() == [0, 0, 0]
    # -inf logits are never drawn, even with u at the ends of [0, 1)
    masked = torch.tensor([[float("-inf"), 0.0, float("-inf"), 0.0]] * 2)
    assert sample_tokens(masked, torch.tensor([0.0, 1 - 2**-53], dtype=torch.float64), 1.0).tolist() == [1, 3]
    with pytest.raises(BackendError, match="NaN"):
        sample_tokens(torch.full((1, 4), float("nan")), u[:1], 1.0)
    with pytest.raises(BackendError, match="rows \\[1\\]"):
        sample_tokens(torch.tensor([[0.0, 1.0], [float("-inf")] * 2]), u[:2], 1.0)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_first_token_distribution_matches_the_model_softmax(peaked, temperature, top_p):
    """Chi-square goodness of fit of 3000 seeded first tokens against softmax(logits / T) within the top-p nucleus."""
    model, tok = peaked
    b = TransformersBackend(model, tok)
    c, n = conv("hello"), 3000
    gens = b.generate_with_tokens([c] * n, SamplingParams(max_new_tokens=1, temperature=temperature, top_p=top_p),
                                  seeds=list(range(n)))
    counts = np.bincount([g.token_ids[0] for g in gens], minlength=len(tok))
    ids = torch.tensor([b.encode([c], 1)[0]])
    with torch.no_grad():
        p = torch.softmax(model(input_ids=ids).logits[0, -1].double() / temperature, -1).numpy()
    order = np.argsort(-p, kind="stable")
    nucleus = order[: int(np.sum(np.cumsum(p[order]) - p[order] < top_p))]
    assert counts[np.setdiff1d(np.arange(len(p)), nucleus)].sum() == 0  # nothing outside the nucleus
    expected = np.zeros_like(p)
    expected[nucleus] = p[nucleus] / p[nucleus].sum() * n
    big = expected >= 5
    assert big.sum() >= 5  # the test has bins to compare
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 5:  # too little mass in the pooled bin: fold it into the last big bin
        obs, exp = np.append(obs[:-2], obs[-2:].sum()), np.append(exp[:-2], exp[-2:].sum())
    stat, df = float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(stat / 2.0)))  # chi2 survival function
    assert p_value > 1e-3, (stat, df)


# ---------------------------------------------------------------------------------------- the loop
def test_greedy_batch_equals_transformers_greedy_row_by_row(peaked):
    model, tok = peaked
    b = TransformersBackend(model, tok)
    gens = b.generate_with_tokens(CONVS, SamplingParams(max_new_tokens=12, temperature=0), seeds=[0] * len(CONVS))
    for c, g in zip(CONVS, gens):
        ids = torch.tensor([tok(b.render(c), add_special_tokens=False)["input_ids"]])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             eos_token_id=b.stop_token_ids, pad_token_id=b.pad_token_id)[0, ids.shape[1]:].tolist()
        assert g.token_ids == ref[: len(g.token_ids)] and len(g.token_ids) in (len(ref), 12)


def ending_backend(model, tok, **kw):
    """A back end whose end-of-turn set is 40 ordinary tokens: sampled rows end at different steps."""
    return TransformersBackend(model, tok, stop_token_ids=list(range(100, 140)), **kw)


def test_loop_samples_what_generate_samples(peaked):
    model, tok = peaked
    p = SamplingParams(max_new_tokens=10, temperature=1.0)
    seeds = [11, 22, 33, 44, 55]
    loop = ending_backend(model, tok).generate_with_tokens(CONVS, p, seeds)
    hf = ending_backend(model, tok, decoder="generate").generate_with_tokens(CONVS, p, seeds)
    assert [g.to_dict() for g in loop] == [g.to_dict() for g in hf]
    plain = ending_backend(model, tok)
    plain._loop.buffered = False  # the loop over a plain DynamicCache (models with sliding-window layers)
    assert [g.to_dict() for g in plain.generate_with_tokens(CONVS, p, seeds)] == [g.to_dict() for g in loop]
    assert len({g.completion_tokens for g in loop}) > 1  # rows ended at different steps (finished rows left the batch)
    assert {g.finish_reason for g in loop} == {"stop", "length"}


def test_same_seed_same_output_whatever_shares_the_batch(peaked):
    model, tok = peaked
    b = ending_backend(model, tok)
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9)
    seeds = [7, 8, 9, 10, 11]
    full = [g.token_ids for g in b.generate_with_tokens(CONVS, p, seeds)]
    assert full == [g.token_ids for g in b.generate_with_tokens(CONVS, p, seeds)]
    assert full == [b.generate_with_tokens([c], p, [s])[0].token_ids for c, s in zip(CONVS, seeds)]
    perm = [3, 0, 4, 2, 1]
    assert [full[i] for i in perm] == [g.token_ids for g in b.generate_with_tokens([CONVS[i] for i in perm], p, [seeds[i] for i in perm])]
    assert full == [g.token_ids for g in ending_backend(model, tok, batch_size=2).generate_with_tokens(CONVS, p, seeds)]
    # a conversation asked many times (prefilled once) with different seeds gives different samples
    many = b.generate_with_tokens([CONVS[0]] * 8 + CONVS, p, list(range(8)) + seeds)
    assert [g.token_ids for g in many[8:]] == full and len({tuple(g.token_ids) for g in many[:8]}) > 4


def test_prefill_groups_minimise_padding_plus_a_cost_per_group():
    lengths = [3, 4, 10, 11, 11, 40]
    assert prefill_groups(lengths, 10**6) == [(0, 6)]
    assert prefill_groups(lengths, 0) == [(0, 1), (1, 2), (2, 3), (3, 5), (5, 6)]

    def cost(groups, c):
        return sum((j - i) * lengths[j - 1] + c for i, j in groups)

    for c in (1, 5, 20, 60):  # the dynamic programme against every split
        splits = [[(0, 6)]]
        for mask in range(1, 32):
            cuts = [0] + [k + 1 for k in range(5) if mask >> k & 1] + [6]
            splits.append(list(zip(cuts[:-1], cuts[1:])))
        assert cost(prefill_groups(lengths, c), c) == min(cost(s, c) for s in splits)


def test_buffer_layer_prefills_groups_right_aligned_then_grows_in_place():
    layer = BufferLayer(batch=3, capacity=7)
    k = torch.arange(3 * 2 * 4 * 1, dtype=torch.float32).reshape(3, 2, 4, 1)
    layer.lazy_initialization(k, k)
    layer.keys.fill_(float("nan")), layer.values.fill_(float("nan"))  # what uninitialised memory may hold
    layer.target = (0, 2, 4)  # rows 0-1, a group 2 tokens wide, right-aligned at position 4
    out, _ = layer.update(k[:2, :, :2], k[:2, :, :2])
    assert torch.equal(out, k[:2, :, :2]) and layer.get_seq_length() == 0
    layer.target = (2, 3, 4)
    layer.update(k[2:, :, :4], k[2:, :, :4])
    layer.filled(4)
    assert torch.equal(layer.keys[:2, :, 2:4], k[:2, :, :2]) and torch.equal(layer.keys[2, :, :4], k[2, :, :4])
    assert torch.all(layer.keys[:, :, :4] == layer.keys[:, :, :4].nan_to_num(1e9))  # left of a prompt: zeros, no NaN
    assert torch.all(layer.keys[:2, :, :2] == 0) and layer.get_mask_sizes(1) == (5, 0)
    keys, values = layer.update(k[:, :, :1], k[:, :, :1] + 1)
    assert keys.shape == (3, 2, 5, 1) and torch.equal(keys[:, :, 4], k[:, :, 0]) and torch.equal(values[:, :, 4], k[:, :, 0] + 1)
    layer.batch_select_indices(torch.tensor([2, 2, 0]))
    assert layer.batch == 3 and torch.equal(layer.keys[0, :, :5], layer.keys[1, :, :5])
    layer.update(k[:, :, :2], k[:, :, :2])
    with pytest.raises(RuntimeError, match="full"):
        layer.update(k[:, :, :1], k[:, :, :1])


# ---------------------------------------------------------------------------------------- stopping
def test_stop_strings_end_of_turn_and_length_in_one_batch(peaked):
    model, tok = peaked
    b = ending_backend(model, tok)
    p = SamplingParams(max_new_tokens=8, temperature=1.0)
    seeds = list(range(20))
    convs = [CONVS[i % 5] for i in range(20)]
    gens = b.generate_with_tokens(convs, p, seeds)
    for g in gens:
        assert g.completion_tokens == len(g.token_ids) <= 8
        assert (g.finish_reason == "stop") == (g.token_ids[-1] in b.stop_token_ids)
        assert all(t not in b.stop_token_ids for t in g.token_ids[:-1])
        assert (g.finish_reason == "length") == (g.completion_tokens == 8 and g.token_ids[-1] not in b.stop_token_ids)
    # stop at a string that some rows write: cut before it, the row ended right after the token that completed it
    texts = [tok.decode(g.token_ids, skip_special_tokens=True) for g in gens]
    stop = next(t[len(t) // 2:][:2] for t in texts if len(t) > 6 and t[len(t) // 2:][:2].strip())
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, stop=(stop,))
    for g, full in zip(b.generate_with_tokens(convs, sp, seeds), gens):
        assert g.token_ids == full.token_ids[: len(g.token_ids)] and stop not in g.text
        if g.finish_reason == "stop_string":
            assert stop in tok.decode(g.token_ids, skip_special_tokens=True)
            assert stop not in tok.decode(g.token_ids[:-1], skip_special_tokens=True)
    assert any(g.finish_reason == "stop_string" for g in b.generate_with_tokens(convs, sp, seeds))


def test_prompt_token_ids_are_cached_per_conversation(peaked):
    model, tok = peaked
    b = TransformersBackend(model, tok, prompt_cache_size=2)
    calls = []
    render = b.render
    b.render = lambda c: calls.append(c) or render(c)
    p = SamplingParams(max_new_tokens=2)
    b.generate([CONVS[0], CONVS[1], CONVS[0]], p, seeds=[1, 2, 3])
    assert len(calls) == 2  # each distinct conversation rendered once
    b.generate([CONVS[0], CONVS[1]], p, seeds=[1, 2])
    assert len(calls) == 2 and len(b._prompts) == 2
    b.generate([CONVS[2]], p, seeds=[1])
    assert len(calls) == 3 and len(b._prompts) == 2  # least recently used evicted
    with pytest.raises(ValueError, match="decoder must be one of"):
        TransformersBackend(model, tok, decoder="fast")
