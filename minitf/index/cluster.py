"""The index's shards on a Ray cluster (``build_index(..., ray="auto" | "host:port")``, ``index --ray``).

The driver reads the corpus and sends each shard's documents [(doc_id, text)] to a pool of actors, one per
CPU of the cluster; each actor gets the weights and the tokenizer once (through Ray's object store, so
workers need neither the corpus nor the model folder on their disk), runs ``index.index_shard`` on one
BLAS thread and returns the shard's ``TopkState`` arrays. The driver merges them with the same
``topk`` merge as a local build and checkpoints every finished shard (``index.build_index``), so the index
is byte-identical to a local build on the same CPU type and NumPy. A lost actor is replaced and its shard
run again; a killed driver resumes from its checkpoint.

Ray is optional: ``pip install -e ".[cluster]"`` (ray==2.60.0).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from minitf.errors import MinitfError

ACTOR_PREFIX = "minitf-index"  # actor names: f"{ACTOR_PREFIX}-{driver pid}-{n}"
INSTALL = 'Ray is not installed: pip install -e ".[cluster]" (or pip install ray==2.60.0)'


def connect(address: str):
    """The ``ray`` module, connected to ``address`` ("auto", "host:port", "ray://…"), or a one-line error.
    A Ray session this process already started (``ray.init()``) is used as is."""
    try:
        import ray
    except ImportError:
        raise MinitfError(f"`ray`: {INSTALL}", param="ray") from None
    if ray.is_initialized():
        return ray
    if (why := _unreachable(address)) is not None:  # Ray itself would retry for minutes, logging on stderr
        raise MinitfError(f"`ray` {address}: no Ray cluster answers there ({why})", param="ray")
    token = _use_token_auth(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # noqa: BLE001 — Ray raises ConnectionError, RuntimeError, ValueError …
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if token else ("; if the cluster uses token authentication, give this process its token "
                                 "(RAY_AUTH_MODE=token and ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise MinitfError(f"`ray` {address}: no Ray cluster answers there ({first}){hint}", param="ray") from None
    return ray


def _use_token_auth(address: str) -> bool:
    """Whether this process authenticates to the cluster with a token. Ray 2.60's ``ray start`` turns token
    authentication on whenever a token exists (``~/.ray/auth_token``, written by any earlier local ``ray.init()``),
    and ``ray.init(address="auto")`` follows it, but an explicit address never does: the GCS then refuses every
    request ("InvalidAuthToken") and ray.init gives up after ~20 s with "Failed to connect to Ray cluster at
    <node ip>". So with an explicit address, RAY_AUTH_MODE unset and a token at hand, turn it on as "auto" would
    (RAY_AUTH_MODE=disabled, or another value, is respected)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if address != "auto" and (os.environ.get("RAY_AUTH_TOKEN") or path.is_file()):
        try:  # sets RAY_AUTH_MODE=token and refreshes Ray's cached config (ray 2.60)
            from ray._private.authentication.authentication_token_setup import _enable_token_auth
        except ImportError:
            os.environ["RAY_AUTH_MODE"] = "token"
        else:
            _enable_token_auth()
        return True
    return False


def _unreachable(address: str) -> str | None:
    """Why nothing listens at the cluster's address (a TCP connect, 5 s at most), or None."""
    import socket

    if address == "auto":  # where ``ray start`` wrote it (or RAY_ADDRESS); none: ray.init says so itself
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        address = os.environ.get("RAY_ADDRESS") or (current.read_text().strip() if current.is_file() else "")
        if not address or address == "auto":
            return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return "write it as host:port"
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None


class _Actor:
    """Holds the model once; indexes shards on one BLAS thread."""

    def __init__(self, shared):
        from minitf.model import Model
        from minitf.index.shard import use_one_blas_thread

        cfg, weights, tokenizer, spec = shared  # resolved from the object store (weights zero-copy)
        self.model = Model(cfg, weights, None)
        self.model._tokenizer = tokenizer
        self.spec = spec
        use_one_blas_thread()

    def run(self, sid: int, docs: list) -> tuple[int, dict]:
        from minitf.index.shard import index_shard

        return sid, index_shard(self.model, self.spec, docs).arrays()


def ray_shards(address: str, model, spec):
    """(run_shards, actors): run_shards(iterator of (sid, docs)) yields (sid, TopkState) as shards finish."""
    ray = connect(address)
    from minitf.index.topk import TopkState

    n_actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    Remote = ray.remote(num_cpus=1)(_Actor)

    def run_shards(shards: Iterator) -> Iterator:
        shared = ray.put((model.cfg, model.w, model.tokenizer, spec))  # once, for every actor
        made = [0]

        def new_actor():
            made[0] += 1
            name = f"{ACTOR_PREFIX}-{os.getpid()}-{made[0]}"
            return Remote.options(name=name).remote(shared)

        actors = [new_actor() for _ in range(n_actors)]
        idle = list(range(n_actors))
        inflight: dict = {}  # ObjectRef → (actor slot, sid, docs)
        retry: list = []  # shards whose actor died
        failures = 0
        shards = iter(shards)
        try:
            while True:
                while idle:
                    nxt = retry.pop() if retry else next(shards, None)
                    if nxt is None:
                        break
                    slot = idle.pop()
                    inflight[actors[slot].run.remote(*nxt)] = (slot, *nxt)
                if not inflight:
                    return
                ready, _ = ray.wait(list(inflight), num_returns=1)
                slot, sid, docs = inflight.pop(ready[0])
                try:
                    got_sid, arrays = ray.get(ready[0])
                except ray.exceptions.RayActorError:  # the actor (or its node) died: a new one redoes the shard
                    failures += 1
                    if failures > 2 * n_actors + 2:
                        raise MinitfError(f"`ray`: {failures} index actors died; finished shards are saved, "
                                          "rerun to resume") from None
                    actors[slot] = new_actor()
                    retry.append((sid, docs))
                    idle.append(slot)
                    continue
                except ray.exceptions.RayTaskError as e:
                    cause = e.as_instanceof_cause()
                    raise MinitfError(str(cause) if isinstance(cause, MinitfError)
                                      else f"`ray`: an index actor failed: {str(e).strip().splitlines()[-1]}") from None
                idle.append(slot)
                yield got_sid, TopkState.from_arrays(arrays)
        finally:
            for a in actors:
                ray.kill(a)

    return run_shards, n_actors
