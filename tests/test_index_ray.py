"""The index on a real Ray (started here, 2 CPUs on 127.0.0.1): byte-identical to the local build, a killed
actor, an interrupted driver that resumes, bad addresses. Skipped where ray is not installed."""
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import minitf.index.build as index_mod
from minitf import Model
from minitf.errors import MinitfError
from minitf.index.build import IndexInterrupted, build_index, index_paths
from test_index import build, same_index, write_corpus, write_model

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[cluster]')")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    model = Model.load(write_model(tmp / "tiny"))
    corpus = write_corpus(tmp / "corpus.txt", n_docs=80, seed=2)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", namespace="minitf-test",
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield tmp, model, corpus
    ray.shutdown()


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(index_mod, "SHARD_CHARS", 600)


def test_ray_build_is_byte_identical_to_the_local_one(cluster, tmp_path, small_shards):
    _, model, corpus = cluster
    local = build(model, corpus, tmp_path / "local", k=4, workers=1)
    on_ray = build(model, corpus, tmp_path / "ray", k=4, ray="auto")
    assert on_ray.manifest["build"] == {**on_ray.manifest["build"], "executor": "ray", "workers": 2}
    assert local.manifest["shards"] >= 8
    same_index(local, on_ray)


def test_a_killed_actor_is_replaced_and_the_result_is_the_same(cluster, tmp_path, small_shards, monkeypatch):
    _, model, corpus = cluster
    monkeypatch.setattr(index_mod, "TOKENS_PER_BATCH", 64)  # more, smaller batches: the kill lands mid-run
    local = build(model, corpus, tmp_path / "local", k=4, workers=1)
    killed = []
    state = index_paths(model, corpus, tmp_path / "ray")[2] / "state.npz"

    def killer():  # once the first shard is checkpointed, kill one of the pool's actors
        deadline = time.monotonic() + 60
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("minitf-index")]
        if names:
            ray.kill(ray.get_actor(names[0], namespace="minitf-test"))
            killed.append((names[0], time.monotonic()))

    t = threading.Thread(target=killer)
    t.start()
    on_ray = build(model, corpus, tmp_path / "ray", k=4, ray="auto")
    finished = time.monotonic()
    t.join()
    assert killed and killed[0][1] < finished  # killed while the build ran, and the build still finished
    same_index(local, on_ray)


def test_an_interrupted_driver_resumes_without_redoing_shards(cluster, tmp_path, small_shards, monkeypatch):
    _, model, corpus = cluster
    d = tmp_path / "ray"
    with pytest.raises(IndexInterrupted, match="rerun to resume"):
        build_index(model, corpus, k=4, ray="auto", progress=False, index_dir=d, stop_after=3)
    state = index_paths(model, corpus, d)[2] / "state.npz"
    saved = json.loads(str(np.load(state)["manifest"]))["shards"]
    assert len(saved) >= 3
    import minitf.index.cluster as cluster_mod

    sent = []
    real = cluster_mod.ray_shards

    def watched(*args):  # the shards the driver hands to the actors
        run_shards, n = real(*args)
        return (lambda todo: run_shards(sent.append(sid) or (sid, docs) for sid, docs in todo)), n

    monkeypatch.setattr(cluster_mod, "ray_shards", watched)
    resumed = build(model, corpus, d, k=4, ray="auto")
    assert sent and not set(sent) & set(saved)  # no finished shard ran again
    assert sorted(sent + saved) == list(range(resumed.manifest["shards"]))
    same_index(resumed, build(model, corpus, tmp_path / "local", k=4, workers=2))


def test_cli_index_on_ray(cluster, tmp_path):
    from click.testing import CliRunner

    from cli import main

    _, model, corpus = cluster
    res = CliRunner().invoke(main, ["index", "--model", str(model.folder), "--corpus", str(corpus), "--ray", "auto",
                                    "--top-k", "3", "--index-dir", str(tmp_path), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "80 documents" in res.output


def test_an_address_nobody_answers_at_is_one_line(tmp_path):
    """In a fresh process (this one's Ray session is up): a dead address fails in seconds, leaving nothing."""
    import subprocess

    corpus = write_corpus(tmp_path / "c.txt", n_docs=5)
    folder = write_model(tmp_path / "tiny")
    t = time.monotonic()
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "index", "--model", str(folder), "--corpus",
                          str(corpus), "--ray", "127.0.0.1:1", "--no-progress"], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and "--ray 127.0.0.1:1: no Ray cluster answers there" in res.stderr
    assert not Path(str(corpus) + ".index").exists()
    assert time.monotonic() - t < 60


def test_model_errors_need_no_cluster(tmp_path):
    with pytest.raises(MinitfError, match="`k` 0"):
        build_index(Model.load(write_model(tmp_path / "tiny")), tmp_path / "c.txt", k=0, ray="auto")
