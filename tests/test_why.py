"""Why a head looked there: Σ of the (query component × key component) pairs = the forward pass's score; S̃
rows sum to zero under the pattern; each source's carried split sums to its context part; the reads agree with
TransformerLens's decompose_resid + apply_ln_to_stack on the unfolded model; a planted head's pair dominates."""
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf import Model, why
from minitf.attribution import head_sources
from minitf.names import Head, Neuron, parse_head, parse_neuron
from numpy_models import draw_case, model_args, random_model

model_args = model_args()


def setup(args, data):
    """A random model, a neuron, a head it may list (layers ≤ the neuron's), a batch of prompts and the run."""
    m, neuron, prompts = draw_case(args, data)
    head = Head(data.draw(st.integers(0, neuron.layer), label="head layer"),
                data.draw(st.integers(0, args["n_head"] - 1)))
    b = data.draw(st.integers(0, len(prompts) - 1), label="prompt")
    return m, neuron, head, m.run(prompts, keep=why.NEEDED, stop_at_layer=neuron.layer), b


def every_pair(m, run, head, b, split_mlp):
    """(pairs [C+1, C+1, n]: S of every (query row, key row) at every key s, from reads at every position;
    centred: their S̃; the forward pass's scores [n]; the pattern row [n]) for prompt b's last query."""
    n = int(run.lengths[b])
    t = n - 1
    p = run["pattern", head.layer][b, head.head, t, :n]  # [n]
    slots = np.vstack([np.eye(n, dtype=np.float32), p[None]])  # [n + 1, n]: every position, the expectation
    qkv = why.head_reads(m, run, head, b, slots, split_mlp).qkv  # [C+1, n+1, 3, Dh]
    scale = 1 / math.sqrt(m.cfg.d_head)
    pairs = np.einsum("cd,esd->ces", qkv[:, t, 0].astype(np.float64), qkv[:, :n, 1]) * scale  # [C+1, C+1, n]
    centred = np.einsum("cd,esd->ces", qkv[:, t, 0].astype(np.float64), qkv[:, :n, 1] - qkv[:, n:, 1]) * scale
    score = run["k", head.layer][b, :n, head.head] @ run["q", head.layer][b, t, head.head] * scale  # [n]
    return pairs, centred, score, p


@settings(max_examples=60, deadline=None)
@given(args=model_args, data=st.data())
def test_pairs_sum_to_the_score_and_centred_rows_to_zero(args, data):
    m, neuron, head, run, b = setup(args, data)
    split = data.draw(st.booleans(), label="split_mlp")
    pairs, centred, score, p = every_pair(m, run, head, b, split)
    magnitude = np.abs(pairs).sum((0, 1))  # [n]
    # 5e-5, not 1e-5: each read is a float32 product c·W/σ whose rounding scales with |c|·|W| before the cancellation
    # inside the product, which `magnitude` does not see (Hypothesis found seed 3325, one layer, d_head 2, at 1.06e-5;
    # 400 random cases stay under 1.5e-6). A missing or doubled component is off by far more.
    np.testing.assert_array_less(np.abs(pairs.sum((0, 1)) - score), 5e-5 * magnitude + 1e-30)
    # S̃ of every pair: S − Σ_s' p S, so under the pattern each row sums to zero, and the bias_k column is 0
    np.testing.assert_allclose(centred, pairs - (pairs @ p)[..., None], rtol=0, atol=1e-5 * magnitude.max() + 1e-30)
    np.testing.assert_allclose(centred @ p, 0, rtol=0, atol=1e-5 * magnitude.max() + 1e-30)
    np.testing.assert_allclose(centred[:, -1], 0, rtol=0, atol=1e-5 * magnitude.max() + 1e-30)
    total = centred.sum((0, 1))  # [n]  = the forward pass's S̃(t, s)
    np.testing.assert_allclose(total, score - p @ score, rtol=0, atol=1e-5 * magnitude.max() + 1e-30)


@settings(max_examples=60, deadline=None)
@given(args=model_args, data=st.data())
def test_the_record_against_every_pair_and_the_source_split(args, data):
    m, neuron, head, run, b = setup(args, data)
    split = data.draw(st.booleans(), label="split_mlp")
    n = int(run.lengths[b])
    pairs, centred, score, p = every_pair(m, run, head, b, split)
    C = pairs.shape[0] - 1
    everything = C * C + 2 * C  # longer than any list, so every list is whole
    [rec] = why.why_for_heads(m, run, neuron, [head], b, top_sources=n, top_pairs=everything, split_mlp=split)
    by_source, _ = head_sources(m, run, neuron, head)
    assert rec.head == str(head) and rec.query_position == n - 1 and rec.components == C
    assert sorted(s.position for s in rec.sources) == list(range(n))
    magnitude = np.abs(pairs).sum((0, 1)).max() + 1e-30
    names = why.component_names(m, head.layer, split)
    np.testing.assert_allclose(rec.key_bias, pairs[:, -1, 0].sum(), rtol=0, atol=1e-5 * magnitude)
    for src in rec.sources:
        s = src.position
        assert src.error <= 1e-5 * magnitude
        np.testing.assert_allclose([src.score, src.centred, src.attention], [score[s], score[s] - p @ score, p[s]],
                                   rtol=1e-6, atol=1e-6 * magnitude)
        # the pairs: all but bias_k's, ordered by |S̃|, each (S, S̃) the brute force's
        assert len(src.pairs) == (C + 1) * C
        got = np.array([[pairs[_row(x.query, names), names.index(x.key), s], x.score,
                         centred[_row(x.query, names), names.index(x.key), s], x.centred] for x in src.pairs])
        np.testing.assert_allclose(got[:, 1], got[:, 0], rtol=0, atol=1e-5 * magnitude)
        np.testing.assert_allclose(got[:, 3], got[:, 2], rtol=0, atol=1e-5 * magnitude)
        assert np.all(np.diff(np.abs(got[:, 3])) <= 1e-6 * magnitude)
        # the marginals: a query component's share sums its row, a key component's its column
        for share in src.query_side:
            r = _row(share.component, names)
            np.testing.assert_allclose([share.score, share.centred], [pairs[r, :, s].sum(), centred[r, :, s].sum()],
                                       rtol=0, atol=1e-5 * magnitude)
        assert {x.component for x in src.key_side} == set(names)
        for share in src.key_side:
            c = names.index(share.component)
            np.testing.assert_allclose([share.score, share.centred], [pairs[:, c, s].sum(), centred[:, c, s].sum()],
                                       rtol=0, atol=1e-5 * magnitude)
        # what it carried: Σ over the components at s = head_sources' context part from s
        assert len(src.carried) == C and src.context == pytest.approx(float(by_source[b, s]))
        carried = sum(x.effect for x in src.carried)
        scale = sum(abs(x.effect) for x in src.carried) + 1e-30
        assert abs(carried - src.context) <= 1e-5 * scale and src.carried_error <= 1e-5 * scale


def _row(name, names):
    return len(names) if name == "bias_q" else names.index(name)


@settings(max_examples=30, deadline=None)
@given(args=model_args, data=st.data())
def test_the_neuron_split_adds_up_to_each_mlp(args, data):
    m, neuron, head, run, b = setup(args, data)
    n = int(run.lengths[b])
    slots = np.eye(n, dtype=np.float32)
    whole, split = (why.head_reads(m, run, head, b, slots, s) for s in (False, True))
    magnitude = np.abs(whole.qkv).max() + 1e-30
    M = m.cfg.d_mlp
    for j in range(head.layer):
        rows = [split.names.index(f"L{j}N{i}") for i in range(M)] + [split.names.index(f"b_out[{j}]")]
        np.testing.assert_allclose(split.qkv[rows].sum(0), whole.qkv[whole.names.index(f"mlp[{j}]")],
                                   rtol=0, atol=1e-5 * magnitude)
    others = [c for c in whole.names if not c.startswith("mlp[")]
    np.testing.assert_allclose(split.qkv[[split.names.index(c) for c in others]],
                               whole.qkv[[whole.names.index(c) for c in others]], rtol=0, atol=1e-6 * magnitude)


def test_top_products_is_exact_when_it_prunes():
    """The pruned search (many heavy-tailed rows, as with MLPs split into neurons) finds the brute force's top."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3000, 8)) * rng.lognormal(0, 2, (3000, 1))).astype(np.float32)
    b = (rng.standard_normal((2500, 8)) * rng.lognormal(0, 2, (2500, 1))).astype(np.float32)
    full = a @ b.T  # [I, J]
    for n in (1, 7, 50):
        i, j, v = why.top_products(a, b, n, block=64)
        best = np.sort(np.abs(full).ravel())[::-1][:n]
        np.testing.assert_allclose(np.abs(v), best, rtol=1e-6)
        np.testing.assert_array_equal(v, full[i, j])


def planted_model():
    """Two layers: head L0H0 writes a fixed direction d (zero mean, so LN₁ keeps it: its values are the constant
    b_V = 1, so z = 1 at every position), head L1H0's query reads d and its key reads token 7's embedding; every
    other query and key weight of L1H0 is nearly off."""
    m = random_model(seed=5, n_layer=2, n_head=2, d_head=16, d_vocab=30, n_ctx=12)
    D, Dh = m.cfg.d_model, m.cfg.d_head
    d = np.random.default_rng(1).standard_normal(D).astype(np.float32)
    d -= d.mean()
    d /= np.linalg.norm(d)
    m.w["h.0.attn.c_attn.weight"].reshape(D, 3, 2, Dh)[:, 2, 0] = 0  # L0H0's values: W_V = 0…
    m.w["h.0.attn.c_attn.bias"].reshape(3, 2, Dh)[2, 0] = 1  # …b_V = 1: z = 1
    m.W_O[0][0][:] = np.full((Dh, 1), 0.5, np.float32) * d  # [Dh, D]: L0H0 writes 8 d
    qkv = m.w["h.1.attn.c_attn.weight"].reshape(D, 3, 2, Dh)  # a view
    qkv[:, :2, 0] *= 0.01  # L1H0's query and key: off…
    qkv[:, 0, 0, 0] += d  # …but the query reads d
    qkv[:, 1, 0, 0] += 3 * m.w["wte.weight"][7] / np.linalg.norm(m.w["wte.weight"][7])  # and the key token 7
    m.w["h.1.attn.c_attn.bias"].reshape(3, 2, Dh)[:2, 0] = 0
    return m


def test_a_planted_head_pair_dominates():
    m = planted_model()
    prompt = [3, 7, 1, 4, 9, 2, 5, 8]
    neuron = Neuron(1, 0)
    run = m.run([prompt], keep=why.NEEDED, stop_at_layer=1)
    p = run["pattern", 1][0, 0, -1]  # [T]
    assert p.argmax() == 1 and p[1] < 0.95  # the head looks at token 7, unsaturated
    [rec] = why.why_for_heads(m, run, neuron, [Head(1, 0)], 0, top_sources=8, top_pairs=3)
    src = next(s for s in rec.sources if s.position == 1)
    top, second = src.pairs[0], src.pairs[1]
    assert (top.query, top.key) == ("L0H0", "embed")
    assert abs(top.centred) > 0.6 * abs(src.centred) and abs(top.centred) > 5 * abs(second.centred)
    assert src.query_side[0].component == "L0H0" and src.key_side[0].component == "embed"


# ---- against TransformerLens 3.9, on the unfolded model ---------------------------------------------------
@pytest.mark.parametrize("style", ["prefixed", "hub"])
def test_reads_match_transformer_lens(tmp_path, style):
    """Each component's query and key: TransformerLens's components (decompose_resid, stack_head_results,
    stack_neuron_results) through apply_ln_to_stack at blocks.k.ln1, times ln1.w and W_Q / W_K = minitf's Q_c, K_c.
    Its attention scores are the forward pass's q·k/√Dh."""
    torch = pytest.importorskip("torch")
    from reference import random_gpt2, save, transformer_lens_model

    hf = random_gpt2(n_layer=3, n_head=2, d_head=4, d_vocab=40, n_ctx=12, d_mlp=12, seed=11)
    m = Model.load(save(hf, tmp_path / style, style))
    tl = transformer_lens_model(hf, processed=False)
    tokens = np.random.default_rng(0).integers(0, 40, (2, 9))
    run = m.run(tokens, keep=why.NEEDED, stop_at_layer=2)
    with torch.inference_mode():
        _, cache = tl.run_with_cache(torch.as_tensor(tokens))
    T, H = tokens.shape[1], m.cfg.n_head
    torch.set_grad_enabled(False)  # back on at the end (pytest runs every test in one process)
    try:
        compare_with(m, run, tl, cache, T, H)
    finally:
        torch.set_grad_enabled(True)


def compare_with(m, run, tl, cache, T, H):
    import torch

    for k in range(3):
        stack, labels = cache.decompose_resid(layer=k, mode="all", return_labels=True)  # [C, B, T, D]
        normed = {"layers": (cache.apply_ln_to_stack(stack, layer=k), labels)}
        if k:
            normed["heads"] = cache.stack_head_results(layer=k, apply_ln=True, return_labels=True)
            normed["neurons"] = cache.stack_neuron_results(layer=k, apply_ln=True, return_labels=True)
        for h in range(H):
            block = tl.blocks[k]
            W = torch.stack([block.attn.W_Q[h], block.attn.W_K[h]])  # [2, D, Dh]
            bias = torch.stack([block.attn.b_Q[h], block.attn.b_K[h]]) + block.ln1.b @ W  # [2, Dh]
            for b in range(2):
                whole = why.head_reads(m, run, Head(k, h), b, np.eye(T, dtype=np.float32))
                split = why.head_reads(m, run, Head(k, h), b, np.eye(T, dtype=np.float32), split_mlp=True)
                ours = {"embed": whole.qkv[0, :, :2], "pos_embed": whole.qkv[1, :, :2]}  # [T, 2, Dh] each
                for j in range(k):
                    heads = [whole.names.index(f"L{j}H{i}") for i in range(H)] + [whole.names.index(f"b_O[{j}]")]
                    ours[f"{j}_attn_out"] = whole.qkv[heads, :, :2].sum(0)
                    ours[f"{j}_mlp_out"] = whole.qkv[whole.names.index(f"mlp[{j}]"), :, :2]
                    for i in range(H):
                        ours[f"L{j}H{i}"] = whole.qkv[whole.names.index(f"L{j}H{i}"), :, :2]
                    for n in range(m.cfg.d_mlp):
                        ours[f"L{j}N{n}"] = split.qkv[split.names.index(f"L{j}N{n}"), :, :2]
                scale = np.abs(whole.qkv[:, :, :2]).max()
                for components, names in normed.values():
                    theirs = torch.einsum("cbtD,qDd->cbtqd", components * block.ln1.w, W)[:, b].numpy()
                    for name, value in zip(names, theirs):  # [T, 2, Dh]
                        np.testing.assert_allclose(ours[name], value, rtol=0, atol=2e-5 * scale, err_msg=name)
                np.testing.assert_allclose(whole.qkv[-1, 0, :2], bias.numpy(), rtol=0, atol=1e-5 * scale)
            scores = cache["attn_scores", k].numpy()  # [B, H, T, T]
            forward = np.einsum("btd,bsd->bts", run["q", k][:, :, h], run["k", k][:, :, h]) / math.sqrt(m.cfg.d_head)
            causal = np.tril(np.ones((T, T), bool))
            np.testing.assert_allclose(scores[:, h][:, causal], forward[:, causal], rtol=1e-5, atol=1e-5)


# ---- trace --why on the embedded model (weights/tiny) ------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
NEURON = "L3N872"


@pytest.fixture(scope="module")
def traced_why():
    """The embedded model's trace of NEURON with ``why`` (in process, as the CLI makes it), and its prompts' run."""
    from minitf import load
    from minitf.corpus import default_corpus
    from minitf.prompts import Prompt, mine_prompts
    from minitf.trace import PromptOrigin, TraceOptions, trace

    m = load("tiny")
    neuron = parse_neuron(NEURON)
    corpus = default_corpus(m, None, needed_for="the test")
    prompts = [Prompt.from_mined(x) for x in mine_prompts(m, neuron, corpus, "train", k=20, progress=False)]
    result = trace(m, neuron, prompts, TraceOptions(why=True), origin=PromptOrigin(True, [], "mined", str(corpus)))
    return m, result, m.run([p.tokens for p in prompts], keep=why.NEEDED, stop_at_layer=neuron.layer)


def test_trace_why_reconstructs_each_listed_heads_score(traced_why):
    m, result, run = traced_why
    checked = 0
    for b, p in enumerate(result.prompts):
        for h in p.top_heads:
            rec = h.why
            assert rec is not None and rec.head == h.head and rec.query_position == len(p.tokens) - 1
            assert [s.position for s in rec.sources] == [s.position for s in h.sources]  # the trace's own sources
            pairs, centred, score, pattern = every_pair(m, run, parse_head(h.head), b, False)
            magnitude = np.abs(pairs).sum((0, 1))  # [n]  Σ|pairs| at each key
            for s, listed in zip(rec.sources, h.sources):
                assert s.error <= 1e-5 * magnitude[s.position] + 1e-30
                assert abs(pairs[..., s.position].sum() - s.score) <= 1e-5 * magnitude[s.position]
                assert abs(centred[..., s.position].sum() - s.centred) <= 1e-5 * magnitude.max()
                assert s.attention == pytest.approx(listed.attention) and s.context == pytest.approx(listed.effect)
                checked += 1
    assert checked == sum(len(h.sources) for p in result.prompts for h in p.top_heads) > 0


def test_trace_why_json_follows_the_schema_and_reads_back(traced_why):
    jsonschema = pytest.importorskip("jsonschema")
    from minitf.trace import Trace

    _, result, _ = traced_why
    data = result.to_json()
    jsonschema.validate(data, json.loads((ROOT / "docs" / "trace.schema.json").read_text(encoding="utf-8")))
    back = Trace.from_json(data)
    assert back.prompts[0].top_heads[0].why == result.prompts[0].top_heads[0].why
    plain = replace(result, prompts=[replace(p, top_heads=[replace(h, why=None) for h in p.top_heads])
                                     for p in result.prompts])
    assert all("why" not in h for p in plain.to_json()["prompts"] for h in p["top_heads"])  # only when computed


def test_cli_trace_why_shows_the_pairs_of_the_differential_heads():
    def cli(*args):
        out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "trace", "--neuron", NEURON, "--why", *args],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return out.stdout

    data, text = json.loads(cli("--json")), cli()
    assert data["differential_heads"]
    for name in data["differential_heads"]:
        listed = [(n, h) for n, p in enumerate(data["prompts"], 1) for h in p["top_heads"] if h["head"] == name]
        assert listed and all("why" in h for _, h in listed)
        n, h = sorted(listed, key=lambda x: not x[1]["active"])[0]  # the first prompt the text shows for it
        block = text.split(f"\n{name} at #{n}")[1].split("\n\n")[0]
        for s in h["why"]["sources"]:
            pair = s["pairs"][0]
            assert f"{pair['query']}×{pair['key']} {pair['centred']:+.3f} ({pair['score']:+.3f})" in block
            assert f"{s['carried'][0]['component']} {s['carried'][0]['effect']:+.3f}" in block


def test_why_refuses_a_rotary_model():
    from types import SimpleNamespace

    from minitf.errors import MinitfError
    from minitf.trace import TraceOptions, trace

    m = random_model()
    neox = SimpleNamespace(cfg=SimpleNamespace(arch="gpt_neox"))
    for call in (lambda: why.why_for_heads(neox, None, Neuron(1, 0), [Head(0, 0)], 0),
                 lambda: trace(neox, Neuron(1, 0), [object()], TraceOptions(why=True))):
        with pytest.raises(MinitfError, match="gpt_neox") as e:
            call()
        assert e.value.param == "why"
    why.check_model(m)  # GPT-2: fine
