"""The neuron index against a brute-force pass (each document run alone), resuming, staleness, the CLI."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import minitf.index as index_mod
from minitf import Model
from minitf.corpus import documents, split_of, tokenize_document
from minitf.errors import MinitfError
from minitf.index import HIST_EDGES, IndexInterrupted, build_index, index_paths, load_index
from numpy_models import random_model
from reference_paths import TOKENIZER_DIR

WORDS = ("the cat sat on a mat and God said let there be light over the deep waters while a dog ran far away "
         "across green hills , . ; ! ? 1 2 3").split()


def write_model(folder: Path, seed=0, n_layer=2, n_head=2, d_head=8, n_ctx=48, pos_scale=0.2) -> Path:
    """A random GPT-2 folder with the test tokenizer (457 tokens). Small position embeddings make activations
    depend on the tokens more than on where they are."""
    from safetensors.numpy import save_file

    m = random_model(seed=seed, n_layer=n_layer, n_head=n_head, d_head=d_head, d_vocab=457, n_ctx=n_ctx)
    w = dict(m.w)
    w["wpe.weight"] = (w["wpe.weight"] * pos_scale).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_layer": n_layer, "n_head": n_head, "n_embd": n_head * d_head, "n_positions": n_ctx,
        "vocab_size": 457, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / name, folder / name)
    return folder


def write_corpus(path: Path, n_docs=60, seed=0, max_words=70) -> Path:
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, rng.integers(1, max_words))).capitalize() for _ in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    model = Model.load(write_model(tmp / "tiny"))
    corpus = write_corpus(tmp / "corpus.txt")
    return tmp, model, corpus


def brute_force(model, corpus, layers, k, bos=True, split=None):
    """Every document run alone: per split slot, per layer, all (doc, position) activations."""
    first = 1 if bos else 0
    acts = {}  # (slot, layer) → list of (doc_id, post [T', M]) without BOS
    for doc in documents(corpus, split):
        ids = tokenize_document(model, doc.text, bos)
        if len(ids) <= first:
            continue
        run = model.run(ids, logits=None, keep={"post"}, stop_at_layer=max(layers))
        slot = ("train", "test").index(split_of(doc))
        for layer in layers:
            acts.setdefault((slot, layer), []).append((doc.doc_id, run["post", layer][0, first:].astype(np.float64)))
    return acts


def check_against_brute_force(idx, acts, model, layers, k, first=1):
    M = model.cfg.d_mlp
    for (slot, layer), rows in acts.items():
        split = ("train", "test")[slot]
        allv = np.concatenate([p for _, p in rows])  # [N, M]
        assert idx.positions(split) == allv.shape[0]
        doc_max = {d: p.max(0) for d, p in rows}  # doc → [M]
        for n in range(M):
            top = idx.top(f"L{layer}N{n}", split)
            ref = np.sort(np.array([m[n] for m in doc_max.values()]))[::-1][:k]
            assert len(top) == min(k, len(rows))
            np.testing.assert_allclose([a for _, _, a in top], ref, atol=1e-5)  # the k best document maxima
            assert len({d for d, _, _ in top}) == len(top)  # distinct documents
            by_doc = dict(rows)
            for d, p, a in top:  # each entry is that document's peak, at a real position
                assert abs(by_doc[d][p - first, n] - a) < 1e-5 and abs(doc_max[d][n] - a) < 1e-5
            # counts: exact, except values within 1e-5 of a bin edge may fall either side
            v = allv[:, n]
            near = lambda e: int((np.abs(v - e) < 1e-5).sum())  # noqa: E731
            assert abs(idx.positive_count(f"L{layer}N{n}", split) - int((v > 0).sum())) <= near(0)
            edges, counts = idx.histogram(f"L{layer}N{n}", split)
            ref_counts = np.histogram(v, np.concatenate([[-np.inf], edges, [np.inf]]))[0]
            assert counts.sum() == v.size
            assert np.abs(counts - ref_counts).max() <= sum(near(e) for e in edges)


def test_index_equals_brute_force(setup, tmp_path):
    _, model, corpus = setup
    layers, k = [0, 1], 5
    path = build_index(model, corpus, layers=layers, k=k, workers=1, progress=False, index_dir=tmp_path)
    assert path == tmp_path / "tiny.npz" and (tmp_path / "tiny.json").is_file()
    idx = load_index(model, corpus, tmp_path)
    check_against_brute_force(idx, brute_force(model, corpus, layers, k), model, layers, k)
    assert idx.documents() == 60 and idx.documents("train") + idx.documents("test") == 60
    merged = idx.top("L1N3")  # both splits merged: the k best over all documents
    assert [a for _, _, a in merged] == sorted((a for _, _, a in idx.top("L1N3", "train") + idx.top("L1N3", "test")),
                                               reverse=True)[:k]
    manifest = json.loads((tmp_path / "tiny.json").read_text())
    assert manifest["format"] == "minitf-neuron-index" and manifest["layers"] == layers and manifest["k"] == k
    assert manifest["hist_edges"] == HIST_EDGES.tolist() and manifest["bos"] is True and manifest["complete"]
    with np.load(path) as data:
        assert data["top_act"].shape == (2, 2, k, model.cfg.d_mlp) and data["top_act"].dtype == np.float32
        assert data["hist"].shape == (2, 2, len(HIST_EDGES) + 1, model.cfg.d_mlp)


def test_one_layer_no_bos_and_a_split(setup, tmp_path):
    _, model, corpus = setup
    build_index(model, corpus, layers=[1], k=3, split="test", bos=False, workers=1, progress=False, index_dir=tmp_path)
    idx = load_index(model, corpus, tmp_path)
    check_against_brute_force(idx, brute_force(model, corpus, [1], 3, bos=False, split="test"), model, [1], 3, first=0)
    assert idx.layers == [1] and not idx.bos and idx.split == "test"
    with pytest.raises(MinitfError, match="only test documents"):
        idx.top("L1N0", "train")
    with pytest.raises(MinitfError, match="layer 0 is not indexed"):
        idx.top("L0N0")


def test_two_workers_equal_one_worker(setup, tmp_path):
    _, model, corpus = setup
    one = load_index(model, corpus, build_index(model, corpus, k=4, workers=1, progress=False,
                                                index_dir=tmp_path / "one").parent)
    two = load_index(model, corpus, build_index(model, corpus, k=4, workers=2, progress=False,
                                                index_dir=tmp_path / "two").parent)
    np.testing.assert_allclose(one.state.top_act, two.state.top_act, atol=1e-5)
    assert (one.state.seen == two.state.seen).all() and (one.state.docs == two.state.docs).all()
    assert np.abs(one.state.hist - two.state.hist).max() <= 2
    assert two.manifest["workers"] == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_build_resumes_to_the_same_result(setup, tmp_path, monkeypatch, workers):
    _, model, corpus = setup
    monkeypatch.setattr(index_mod, "BLOCK_TOKENS", 150)  # many small blocks
    monkeypatch.setattr(index_mod, "TOKENS_PER_BATCH", 100)
    kw = dict(k=4, workers=workers, progress=False)
    full = load_index(model, corpus, build_index(model, corpus, index_dir=tmp_path / "full", **kw).parent)

    d = tmp_path / "resumed"
    monkeypatch.setenv(index_mod.STOP_AFTER_ENV, "2")
    with pytest.raises(IndexInterrupted):
        build_index(model, corpus, index_dir=d, **kw)
    npz, _, partial = index_paths(model, corpus, d)
    assert not npz.exists() and sorted(p.name for p in partial.glob("worker*.npz")) == \
        [f"worker{w}of{workers}.npz" for w in range(workers)]
    with pytest.raises(IndexInterrupted):  # resumes, then stops again two blocks later
        build_index(model, corpus, index_dir=d, **kw)
    monkeypatch.delenv(index_mod.STOP_AFTER_ENV)
    resumed = load_index(model, corpus, build_index(model, corpus, index_dir=d, **kw).parent)
    assert not partial.exists()
    for name in index_mod._State.ARRAYS:
        np.testing.assert_array_equal(getattr(resumed.state, name), getattr(full.state, name), err_msg=name)


def test_changed_settings_start_the_partial_build_over(setup, tmp_path, monkeypatch):
    _, model, corpus = setup
    monkeypatch.setattr(index_mod, "BLOCK_TOKENS", 150)
    monkeypatch.setenv(index_mod.STOP_AFTER_ENV, "1")
    with pytest.raises(IndexInterrupted):
        build_index(model, corpus, k=4, workers=1, progress=False, index_dir=tmp_path)
    monkeypatch.delenv(index_mod.STOP_AFTER_ENV)
    build_index(model, corpus, k=6, workers=1, progress=False, index_dir=tmp_path)  # other k: not a resume
    ref = tmp_path / "ref"
    build_index(model, corpus, k=6, workers=1, progress=False, index_dir=ref)
    a, b = load_index(model, corpus, tmp_path), load_index(model, corpus, ref)
    np.testing.assert_array_equal(a.state.top_act, b.state.top_act)
    np.testing.assert_array_equal(a.state.docs, b.state.docs)


def test_up_to_date_index_is_reused_and_stale_ones_are_refused(setup, tmp_path):
    tmp, model, _ = setup
    corpus = write_corpus(tmp_path / "c.txt", n_docs=12)
    assert load_index(model, corpus) is None
    path = build_index(model, corpus, k=2, workers=1, progress=False)
    assert path == Path(str(corpus) + ".index") / "tiny.npz"
    mtime = path.stat().st_mtime_ns
    assert build_index(model, corpus, k=2, workers=1, progress=False) == path and path.stat().st_mtime_ns == mtime
    assert load_index(model, corpus) is not None

    other = Model.load(write_model(tmp_path / "other" / "tiny", seed=9))  # same name, other weights
    with pytest.raises(MinitfError, match="stale index: built for other weights"):
        load_index(other, corpus)
    with corpus.open("a") as f:
        f.write("\nA new document.\n")
    with pytest.raises(MinitfError, match="stale index: .*c.txt changed"):
        load_index(model, corpus)
    build_index(model, corpus, k=2, workers=1, progress=False)  # rebuilding replaces it
    assert load_index(model, corpus).documents() == 13


def test_bad_arguments(setup, tmp_path):
    _, model, corpus = setup
    with pytest.raises(MinitfError, match="--layers 7"):
        build_index(model, corpus, layers=[7], progress=False, index_dir=tmp_path)
    with pytest.raises(MinitfError, match="unknown corpus format"):
        build_index(model, tmp_path / "c.csv", progress=False)
    with pytest.raises(MinitfError, match="--split dev"):
        build_index(model, corpus, split="dev", progress=False, index_dir=tmp_path)
    with pytest.raises(MinitfError, match="--top-k 0"):
        build_index(model, corpus, k=0, progress=False, index_dir=tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{oops\n')
    with pytest.raises(MinitfError, match="bad.jsonl: line 2"):
        build_index(model, bad, workers=1, progress=False, index_dir=tmp_path)


def test_worker_errors_surface_as_one_line(setup, tmp_path):
    _, model, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n' * 5 + '{oops\n')
    with pytest.raises(MinitfError, match="bad.jsonl: line 6"):
        build_index(model, bad, workers=2, progress=False, index_dir=tmp_path)


def test_cli_index(setup, tmp_path):
    from cli import main

    tmp, model, corpus = setup
    res = CliRunner().invoke(main, ["index", "--model", str(model.folder), "--corpus", str(corpus), "--layer", "1",
                                    "--top-k", "3", "--workers", "1", "--index-dir", str(tmp_path), "--show", "L1N2",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "60 documents" in res.output and "L1N2: top documents" in res.output and "[[" in res.output
    res = CliRunner().invoke(main, ["index", "--model", str(model.folder), "--corpus", str(tmp_path / "x.txt"),
                                    "--workers", "1"])
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0 and "no such corpus file" in res.output


SLOW_SITECUSTOMIZE = '''
import os, pathlib, time
import minitf.index as I
I.BLOCK_TOKENS, I.TOKENS_PER_BATCH = 400, 200  # many small blocks (the parent's values travel to the workers)
_run_batch, _calls = I._run_batch, []
def _slow(*args):
    _calls.append(1)
    if len(_calls) == 5 and os.environ.get("MARKER"):  # a few blocks done: tell the test
        pathlib.Path(os.environ["MARKER"]).touch()
    time.sleep(0.05)
    return _run_batch(*args)
I._run_batch = _slow
'''


def test_ctrl_c_then_rerun_gives_the_uninterrupted_result(setup, tmp_path):
    """A real SIGINT to the CLI's process group (as a terminal's Ctrl-C) while two workers run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp, model, _ = setup
    corpus = write_corpus(tmp_path / "c.txt", n_docs=150, seed=5, max_words=60)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_SITECUSTOMIZE)  # slows every batch, in the workers too
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(root)]))

    def cli(index_dir, **kw):
        return subprocess.Popen([sys.executable, str(root / "cli.py"), "index", "--model", str(model.folder),
                                 "--corpus", str(corpus), "--index-dir", str(index_dir), "--workers", "2",
                                 "--top-k", "4", "--no-progress"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **{"env": env, **kw})

    d = tmp_path / "interrupted"
    marker = tmp_path / "indexing"
    p = cli(d, start_new_session=True, env=dict(env, MARKER=str(marker)))
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:  # a worker is at its 5th batch
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert "rerun to resume" in err and not (d / "tiny.npz").exists()
    parts = sorted((d / "tiny.partial").glob("worker*of2.npz"))
    assert len(parts) == 2
    done = [json.loads(str(np.load(part)["manifest"]))["docs_done"] for part in parts]
    assert 0 < sum(done) < 150  # stopped part-way, with progress saved

    resumed, reference = cli(d), cli(tmp_path / "reference")
    for proc in (resumed, reference):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    a, b = load_index(model, corpus, d), load_index(model, corpus, tmp_path / "reference")
    assert a.documents() == 150
    for name in index_mod._State.ARRAYS:
        np.testing.assert_array_equal(getattr(a.state, name), getattr(b.state, name), err_msg=name)


def test_ctrl_c_in_process_stops_mid_block_and_resumes_exactly(setup, tmp_path, monkeypatch):
    """workers=1: the first SIGINT stops after the current batch, saving the state from the block's start."""
    import signal

    _, model, corpus = setup
    monkeypatch.setattr(index_mod, "BLOCK_TOKENS", 600)
    monkeypatch.setattr(index_mod, "TOKENS_PER_BATCH", 100)
    kw = dict(k=4, workers=1, progress=False)
    reference = load_index(model, corpus, build_index(model, corpus, index_dir=tmp_path / "ref", **kw).parent)

    run_batch, calls = index_mod._run_batch, []

    def interrupting(*args):
        calls.append(len(args[3]))  # documents in this batch
        if len(calls) == 10:
            signal.raise_signal(signal.SIGINT)  # as a terminal's Ctrl-C, delivered to this (main) thread
        return run_batch(*args)

    monkeypatch.setattr(index_mod, "_run_batch", interrupting)
    d = tmp_path / "resumed"
    with pytest.raises(IndexInterrupted):
        build_index(model, corpus, index_dir=d, **kw)
    assert len(calls) == 10  # stopped right after the batch during which Ctrl-C came
    part = np.load(d / "tiny.partial" / "worker0of1.npz")
    assert 0 < json.loads(str(part["manifest"]))["docs_done"] < 60
    assert 0 < part["docs"].sum() < sum(calls)  # mid-block: the saved state is the block's start, not batch 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.setattr(index_mod, "_run_batch", run_batch)
    resumed = load_index(model, corpus, build_index(model, corpus, index_dir=d, **kw).parent)
    for name in index_mod._State.ARRAYS:
        np.testing.assert_array_equal(getattr(resumed.state, name), getattr(reference.state, name), err_msg=name)


def test_a_worker_that_dies_is_reported_not_waited_for(setup, tmp_path):
    """A worker killed at birth (as by the OOM killer) gives one error line, and a rerun can resume."""
    import os
    import subprocess
    import sys

    _, model, corpus = setup
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if '--multiprocessing-fork' in sys.argv:\n"  # only in the spawned workers
        "    os._exit(9)\n")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(root)]))
    res = subprocess.run([sys.executable, str(root / "cli.py"), "index", "--model", str(model.folder), "--corpus",
                          str(corpus), "--index-dir", str(tmp_path / "idx"), "--workers", "2", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "an index worker died" in res.stderr and "rerun to resume" in res.stderr
