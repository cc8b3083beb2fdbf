"""``study``: the paper's experiments over many neurons in one resumable run, and their aggregates.

The paper's five steps, numbered as in the README. Step 1 chooses the neurons: per layer the top K by
congruence after the authors' token filter (``minitf.neurons``), or a list of one's own. For every studied
neuron N = L{l}N{n}, as the per-neuron commands do it:

* step 2, prompts: N's top prompts of ``split``, mined from the corpus index (built first if missing or stale;
  the index is loaded once and the documents of all neurons are read in one pass over the corpus);
* steps 3 and 5, trace (``minitf.trace``): every candidate head's direct effect, active and differential heads,
  and the ablation check of the differential heads (and ``ablate`` top ones); for each differential head h
  the trace's per-prompt drops Δp = p(token) − p(token | h removed) and Δpost are kept, with whether h is
  active;
* step 4, with an LLM: each differential head explained from the train-split trace and scored on the
  test-split trace (``minitf.explain.driver.evaluate_head``: balanced accuracy, ROC-AUC where logprobs come
  back).

Then the aggregates per layer and overall (``minitf.study.summary``): neurons, neurons with ≥ 1 differential head,
   differential heads per neuron, layer distance l − l_h of each differential head, explanation scores
   (mean ± std with N − 1, median, histogram over [0, 1], skipped), and over all (neuron, differential head)
   pairs the pooled per-prompt Δp and Δpost on active vs inactive prompts: means, medians and the two-sample
   KS statistic D = sup |F_active − F_inactive| with its p-value (``minitf.ablation.ks_2samp``).

Files in ``out`` (``minitf.study.folder.StudyDir``): ``settings.json`` (what the study is; a rerun with other
settings is refused unless ``restart``), ``neurons/L{l}N{n}.json`` (one record per neuron, written atomically
when it is finished: the resume unit), ``study.json`` (all records without per-prompt detail, the aggregates,
settings and the model's and corpus's sha256) and the site (``minitf.study.site``). Everything that differs between two runs
of the same study (times, LLM call counts) is under a ``"run"`` key, so a resumed study equals an
uninterrupted one elsewhere. The LLM's on-disk cache (``minitf.explain.cache``) answers every request made
before, so resuming never sends a request twice.

``run_study`` runs the steps in order: ``check_options``, ``select_neurons``, ``make_llm``, ``study_settings``
(then ``StudyDir.prepare`` and the resume), ``load_inputs``, ``run_neurons`` (``study_neuron`` and
``explain_and_score`` per neuron), ``study_result`` and the site.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from minitf.errors import MinitfError
from minitf.explain.llm import DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from minitf.names import Neuron
from minitf.protocol import get_protocol
from minitf.study.select import read_neuron_list, select_neurons, study_selection  # noqa: F401  (the API's)
from minitf.study.folder import FORMAT, VERSION, StudyDir
from minitf.util.lock import folder_lock
from minitf.study.summary import aggregates, summary_entry, summary_lines  # noqa: F401  (summary_lines: the CLI's)
from minitf.study.scoring import explain_and_score, pair_scoring, random_explanations


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C: the finished neurons are saved; rerunning the same command continues."""


@dataclass
class StudyOptions:
    """What a study is; every field but the ``NOT_SETTINGS`` ones must match to resume a partial study."""

    layers: list[int] = field(default_factory=list)  # [] = every layer
    per_layer: int = 20
    exclude: list[str] = field(default_factory=list)
    neurons_file: str | None = None  # study exactly these neurons (then layers / per_layer are unused)
    corpus: str | None = None
    split: str = "train"
    n_prompts: int | None = None  # None: the protocol's (20; neo2023 30)
    rule: str | None = None  # None: the protocol's head_rule (sigma2; neo2023 top3)
    scores: str = "paper"
    include_same_layer: bool = False
    min_count: int = 0
    ablate: int = 0  # top heads ablated besides the differential ones (for the neuron pages only)
    llm: str | None = None  # LLM model name; None: explain.llm.DEFAULT_LLM if a key or server is set, else none
    base_url: str | None = None
    max_calls: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT  # seconds per LLM request
    max_retries: int = DEFAULT_MAX_RETRIES  # the openai client's retries
    cache_dir: str | None = None
    paths: bool = False  # trace --paths for each neuron (minitf.paths; costs reruns): the mediated fractions
    protocol: str = "neo2024"  # minitf.protocol: the LLM's requests, scoring, n_test (and the trace's choices)
    test_corpus: str | None = None  # test prompts mined from this corpus (the paper's); None: the test split
    random_neurons: bool = False  # the paper's baseline: per_layer neurons per layer drawn at random (seed)
    seed: int = 0
    explain_prompts: int | None = None  # explain from the first N train prompts only (None: all)
    index_dir: str | None = None  # where the corpus's index is read or built (``ensure_index``)
    exclude_list: str | None = None  # the authors' reject list: "paper" | "none" (None: the protocol's exclude)
    scorers: str = "paper"  # issue 24: scorers beside the paper's (minitf.study.scoring), comma-separated
    baselines: bool = False  # issue 24: the LLM baselines too (random explanation with ``seed``, token only)

    NOT_SETTINGS = ("max_calls", "concurrency", "timeout", "max_retries", "cache_dir", "neurons_file", "index_dir")  # budget and plumbing only


# ---- step 1: neurons -----------------------------------------------------------------------------------
def ensure_index(model, corpus: Path, layers: set[int], k: int, progress: bool, index_dir: str | Path | None = None,
                 say=lambda line: print(line, file=sys.stderr)):
    """The corpus's neuron index, loaded once; built first (with its progress bar) when it is missing, stale
    or lacks a layer or enough documents per neuron. Found where ``load_index`` looks (``index_dir``, else next to
    the corpus, then the cache); built in ``index_dir``, else in the cache (``index.build.cache_index_dir``),
    never over an index next to the corpus (the shipped ``weights/*/corpus.txt.gz.index`` stays as it is):
    when one there holds too little, ``say`` says so in one line."""
    from minitf.index.build import build_index, cache_index_dir, given_index_dir, load_index

    def fits(index) -> bool:
        return layers <= set(index.layers) and index.k >= k and index.bos and index.split is None

    try:
        index = load_index(model, corpus, index_dir, fits=fits)
    except MinitfError:  # stale or unreadable: build_index redoes it
        index = None
    if index is not None and fits(index):
        return index
    target = given_index_dir(index_dir) or cache_index_dir(corpus)
    if index is not None:
        say(f"study: the index {index.path} holds the top {index.k} documents of layers {list(index.layers)}; "
            f"{k} prompts of layers {sorted(layers)} need more: building an index in {target}")
    have = set(index.layers) if index is not None else set()
    build_index(model, corpus, layers=sorted(have | layers), k=max(30, k), progress=progress, index_dir=target)
    return load_index(model, corpus, target)


def _prompts(model, neuron: Neuron, corpus: Path, split: str, k: int, index, docs, protocol=None, sets=None):
    """N's mined prompts as trace prompts, and their origin as ``trace_neuron`` would record it: the authors'
    trimming when the protocol's is theirs (``trace.authors_trace_prompts``; ``sets``: a layer's neurons at
    once, ``trace.AuthorsPromptSets``), else ``mine_prompts``."""
    from minitf.prompts import Prompt, mine_prompts
    from minitf.trace import PromptOrigin, authors_trace_prompts

    proto = get_protocol(protocol, n_prompts=k)
    if proto.trimming == "authors" and sets is not None:
        return sets(neuron)
    if proto.trimming == "authors":
        try:
            return authors_trace_prompts(model, neuron, corpus, split, True, proto)
        except MinitfError:  # no prompt survives the trimming: the neuron is skipped, as with no activating document
            return [], PromptOrigin(True, [], f"none trimmed the authors' way from {corpus}", str(corpus), split)

    mined = mine_prompts(model, neuron, corpus, split=None if split == "all" else split, k=k, index=index,
                         docs=docs)
    prompts = [Prompt.from_mined(m) for m in mined]
    return prompts, PromptOrigin(True, [], f"top {len(prompts)} mined from {corpus}, split {split}", str(corpus), split)


# ---- steps 3–5 for one neuron --------------------------------------------------------------------------
def ablation_samples(trace) -> dict:
    """For each differential head: per-prompt Δp, Δpost (the trace's own ablation runs, ``Ablation.d_p``/``d_post``)
    and whether the head is active on the prompt."""
    out = {}
    for h in trace.differential_heads:
        ablation = trace.head(h).ablation
        out[h] = {"active": [h in p.active_heads for p in trace.prompts],
                  "dp": [float(x) for x in ablation.d_p], "dpost": [float(x) for x in ablation.d_post]}
    return out


def test_ablation_samples(model, neuron: Neuron, prompts, token: int, heads: list[str], test, scores: str) -> dict:
    """For each of ``heads`` (the train trace's differential heads), on each test prompt: Δp = p(token) −
    p(token | h removed, as the trace removes it: ``minitf.ablation.ablate_heads``), whether h is active there
    (the test trace's rule) and the clean p(token). The paper's ablation (notebook 8) runs on the test prompts."""
    from minitf.ablation import ablate_heads
    from minitf.attribution import head_value_constant
    from minitf.kernels import softmax
    from minitf.names import parse_head
    from minitf.scores import scores_mode

    tokens = [p.tokens for p in prompts]
    hs = [parse_head(h) for h in heads]
    replace_with = ({h: head_value_constant(model, h.layer)[h.head] for h in hs}
                    if scores_mode(scores).ablation_keeps_constant else None)
    drops = ablate_heads(model, tokens, neuron, token, hs, replace_with=replace_with)
    p_clean = softmax(model.run(tokens, logits="last").logits)[:, token]  # [P]
    return {str(h): {"active": [str(h) in p.active_heads for p in test.prompts],
                     "dp": [float(x) for x in drops[h][1]], "p_clean": [float(x) for x in p_clean]} for h in hs}


def study_neuron(model, neuron: Neuron, options: StudyOptions, corpus: Path, index, docs, explain: bool,
                 step, test_inputs=None, sets=None) -> tuple[dict, dict | None]:
    """One neuron's record without its explanations: its full trace, the per-prompt ablation samples of its
    differential heads and its activation histogram from the index; and, when ``explain`` and it has
    differential heads, its train- and test traces (for ``explain_and_score``), else None. The test trace is
    of the test split, or of ``test_inputs`` = (test corpus, its index, its documents) when given; it ablates
    the differential heads, and its per-prompt drops are the record's ``test_ablation_samples`` (the paper's
    ablation runs on the test prompts)."""
    from minitf.index.histogram import index_histogram
    from minitf.trace import TraceOptions, trace

    t0 = time.monotonic()
    record: dict = {"neuron": str(neuron), "layer": neuron.layer, "index": neuron.index}
    step("prompts")
    prompts, origin = _prompts(model, neuron, corpus, options.split, options.n_prompts, index, docs,
                              options.protocol, sets)
    if not prompts:
        from minitf.neurons import neuron_card
        from minitf.trace import card_record

        record["card"] = card_record(neuron_card(model, neuron), model.cfg.d_mlp).to_json()
        why = (f"no prompt of {neuron} survives the authors' trimming" if get_protocol(options.protocol).trimming
               == "authors" else f"no document activates {neuron} above 0")  # as trace says it
        record["skipped"] = f"{why} in the {options.split} split"
        record["run"] = {"seconds": round(time.monotonic() - t0, 3)}
        return record, None
    step("trace")
    topts = TraceOptions(rule=options.rule, include_same_layer=options.include_same_layer, scores=options.scores,
                         ablate=options.ablate, per_position=True, paths=options.paths,
                         protocol=get_protocol(options.protocol, n_prompts=options.n_prompts))
    result = trace(model, neuron, prompts, topts, origin=origin)
    record["trace"] = result.to_json()
    record["ablation_samples"] = ablation_samples(result)
    record["histogram"] = index_histogram(model, neuron, result.settings.origin, index)
    record["explanations"] = {} if explain else None
    traces = None
    if explain and result.differential_heads:
        step("test trace")
        if test_inputs is not None:
            test_prompts, test_origin = _prompts(model, neuron, test_inputs[0], "all", options.n_prompts,
                                                 *test_inputs[1:], options.protocol)
        else:
            test_prompts, test_origin = _prompts(model, neuron, corpus, "test", options.n_prompts, index, docs,
                                                 options.protocol)
        if test_prompts:
            test_opts = TraceOptions(rule=options.rule, include_same_layer=options.include_same_layer,
                                     scores=options.scores, ablate=0, protocol=options.protocol)
            test = trace(model, neuron, test_prompts, test_opts, card=result.neuron, origin=test_origin)
            record["test_ablation_samples"] = test_ablation_samples(model, neuron, test_prompts, result.neuron.token.id,
                                                                    result.differential_heads, test, options.scores)
        else:
            test = replace(result, prompts=[])  # no test prompt: every head is skipped
        traces = (result, test)
    record["run"] = {"seconds": round(time.monotonic() - t0, 3)}
    return record, traces


# ---- the run -------------------------------------------------------------------------------------------
@dataclass
class Finished:
    """The neurons' records so far: ``done`` (finished: on disk, the resume unit) and ``partial`` (their LLM
    step ran out of the ``max_calls`` budget: saved with their ``"pending"`` heads, redone by a rerun)."""

    done: dict[str, dict]
    partial: dict[str, dict] = field(default_factory=dict)

    @property
    def pending_heads(self) -> int:
        return sum(len(r["pending"]) for r in self.partial.values())

    def records(self, neurons: list[Neuron]) -> list[dict]:
        """Every record so far, in the order of ``neurons``."""
        return [self.done.get(str(n)) or self.partial[str(n)] for n in neurons
                if str(n) in self.done or str(n) in self.partial]


def run_study(model, out, options: StudyOptions, restart: bool = False, progress: bool = True,
              say=lambda line: print(line, file=sys.stderr)) -> dict:
    """Run (or resume) the study in ``out``; returns study.json's content. ``say`` prints one-line notes."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    folder = StudyDir(out)
    proto = get_protocol(options.protocol)  # a choice left None is the protocol's
    options = replace(options, rule=options.rule or proto.head_rule,
                      n_prompts=proto.n_prompts if options.n_prompts is None else options.n_prompts)
    corpus = check_options(model, options)
    selection = study_selection(model, options)
    neurons = selection.neurons
    if not neurons:
        raise MinitfError("no neuron left to study (every one is in --exclude)")
    llm, skipped_reason = make_llm(options)
    options = replace(options, llm=llm.model if llm is not None else None,
                      base_url=options.base_url if llm is not None else None)
    settings = study_settings(model, options, neurons, corpus) | {"selection": selection.record.to_json()}
    if not folder.path.is_dir():
        folder.prepare(settings, restart)  # creates it, or refuses (a file, no permission) in one line naming --out
    with folder_lock(folder.path, "study folder"):  # one study at a time in ``out``; released on any exit
        return _run_locked(model, folder, options, neurons, corpus, settings, restart, llm, skipped_reason, progress,
                           say, started, t0)


def _run_locked(model, folder: StudyDir, options: StudyOptions, neurons: list[Neuron], corpus: Path, settings: dict,
                restart: bool, llm, skipped_reason: str | None, progress: bool, say, started: str, t0: float) -> dict:
    """run_study's work while it holds the study folder's lock."""
    folder.prepare(settings, restart)
    if skipped_reason:
        say(f"explanations skipped: {skipped_reason}")

    finished = Finished(folder.finished(neurons))
    todo = [n for n in neurons if str(n) not in finished.done]
    if finished.done and todo:
        say(f"study: resuming: {len(finished.done)} of {len(neurons)} neurons already done in {folder.path}")
    index, docs = load_inputs(model, corpus, todo, options, llm is not None, progress)
    test_inputs = None
    if llm is not None and options.test_corpus and todo:
        test_inputs = load_inputs(model, Path(options.test_corpus), todo, replace(options, split="all"), False,
                                  progress)
    run_neurons(model, neurons, todo, options, corpus, index, docs, llm, folder, finished, progress,
                (Path(options.test_corpus), *test_inputs) if test_inputs else None)
    random_explanations(llm, finished.records(neurons), options, folder.save_record, say)  # --baselines
    chosen = settings["selection"]  # said once the neurons are done, so that an error before stays the one line
    say(f"study: protocol {options.protocol}, neuron walk {chosen['walk']}; {chosen['note']}")
    if llm is not None:
        from minitf.explain.driver import test_prompts_line

        say(f"protocol {options.protocol}; {test_prompts_line(options.protocol, options.test_corpus)}")
    if finished.pending_heads:
        say(f"--max-calls {options.max_calls} reached: {finished.pending_heads} differential heads left "
            "unexplained; rerun with a higher --max-calls to finish (answers so far are cached)")

    records = finished.records(neurons)
    study = study_result(settings, records, complete=len(finished.done) == len(neurons), llm=llm,
                         pending_heads=finished.pending_heads, skipped_reason=skipped_reason,
                         run={"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "seconds": round(time.monotonic() - t0, 3),
                              "llm": llm.stats() if llm is not None else None})
    from minitf.study.site import write_site

    write_site(folder.path, study, records)
    folder.save_study(study)
    return study


def check_options(model, options: StudyOptions) -> Path:
    """The corpus to mine prompts from; MinitfError for a missing corpus, a bad split or too few prompts."""
    from minitf.corpus import check_split, default_corpus

    corpus = Path(options.corpus) if options.corpus else default_corpus(model)
    if corpus is None:
        raise MinitfError(f"`corpus`: required ({model.folder} has no corpus.txt.gz)", param="corpus")
    if not corpus.is_file():
        raise MinitfError(f"`corpus` {corpus}: no such file", param="corpus")
    check_split(None if options.split == "all" else options.split)
    if options.test_corpus and not Path(options.test_corpus).is_file():
        raise MinitfError(f"`test_corpus` {options.test_corpus}: no such file", param="test_corpus")
    if options.n_prompts < 2:
        raise MinitfError(f"`n_prompts` {options.n_prompts}: must be at least 2", param="n_prompts")
    from minitf.index.build import MAX_INDEX_BYTES, index_bytes

    n_layers = len(options.layers) or model.cfg.n_layer
    if index_bytes(n_layers, options.n_prompts, model.cfg.d_mlp) > MAX_INDEX_BYTES:  # before the index is built
        raise MinitfError(f"`n_prompts` {options.n_prompts}: an index of the top {options.n_prompts} documents of "
                          f"{n_layers} layers would need over {MAX_INDEX_BYTES >> 30} GiB of memory; ask for fewer",
                          param="n_prompts")
    return corpus


def make_llm(options: StudyOptions):
    """(LLM or None, why explanations are skipped or None). An LLM is used with ``llm`` or ``base_url``, or
    when OPENAI_API_KEY is set (then ``explain.llm.DEFAULT_LLM``)."""
    from minitf.explain.driver import llm_client
    from minitf.explain.llm import DEFAULT_LLM, MISSING_KEY_MESSAGE

    key, env_url = os.environ.get("OPENAI_API_KEY"), os.environ.get("OPENAI_BASE_URL")
    if options.llm is None and options.base_url is None and not key:
        return None, "no --llm, no --base-url and OPENAI_API_KEY is not set"
    if not key and not (options.base_url or env_url):
        raise MinitfError(f"`llm` {options.llm}: {MISSING_KEY_MESSAGE}", param="llm")
    return llm_client(options.llm or DEFAULT_LLM, options.base_url, options.cache_dir, options.max_calls,
                      options.concurrency, options.timeout, options.max_retries), None


def study_settings(model, options: StudyOptions, neurons: list[Neuron], corpus: Path) -> dict:
    """settings.json's "settings": the options but the ``NOT_SETTINGS``, the neurons, and the sha256 of the
    model and the corpus."""
    from minitf.load.weights import model_sha256
    from minitf.util.files import file_sha256

    settings = {k: v for k, v in asdict(options).items() if k not in StudyOptions.NOT_SETTINGS}
    return settings | {"layers": sorted({n.layer for n in neurons}), "neurons": [str(n) for n in neurons],
                       "corpus": os.path.abspath(corpus),  # absolute: a resume from another folder finds it
                       "model": {"folder": os.path.abspath(model.folder), "sha256": model_sha256(model)},
                       "corpus_sha256": file_sha256(corpus)}


def load_inputs(model, corpus: Path, todo: list[Neuron], options: StudyOptions, explain: bool, progress: bool):
    """(index, {doc_id: tokens}) for the neurons to do: the corpus's index (``ensure_index``) and, in one pass
    over the corpus, every document among their top ones (of the split, and of the test split with an LLM);
    (None, None) when there is nothing to do."""
    from minitf.corpus import tokenized_documents

    if not todo:
        return None, None
    index = ensure_index(model, corpus, {n.layer for n in todo}, options.n_prompts, progress, options.index_dir)
    if get_protocol(options.protocol).trimming == "authors":  # its prompts read their documents (AuthorsPromptSets)
        return index, None
    splits = [None if options.split == "all" else options.split] + (["test"] if explain else [])
    wanted = {d for n in todo for s in splits for d, _, _ in index.top(n, s)}
    return index, tokenized_documents(model, corpus, wanted)  # one pass for all neurons


@contextmanager
def stop_on_sigint(bar):
    """An Event set by the first Ctrl-C (the current neuron is finished, then the study stops); a second one
    quits at once. Installed in the main thread only (signals are delivered there)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        bar.note("study: stopping after the current neuron (Ctrl-C again to quit now)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run_neurons(model, neurons: list[Neuron], todo: list[Neuron], options: StudyOptions, corpus: Path, index, docs,
                llm, folder: StudyDir, finished: Finished, progress: bool, test_inputs=None) -> None:
    """Study each neuron of ``todo`` (``study_neuron``, then ``explain_and_score``), saving each record in
    ``folder`` and ``finished`` in neuron order. Raises StudyInterrupted after a Ctrl-C.

    The LLM step of a neuron runs on one background thread while the next neurons are computed (it waits on
    the server, the rest on the CPU); records are finished in neuron order, at most two neurons ahead."""
    from minitf.trace import AuthorsPromptSets
    from minitf.util.progress import Progress

    proto = get_protocol(options.protocol, n_prompts=options.n_prompts)
    sets = AuthorsPromptSets(model, todo, corpus, options.split, proto, index) if proto.trimming == "authors" else None
    bar = Progress("study", len(neurons), len(finished.done), unit="neurons", enabled=progress, every=15.0)
    scoring = pair_scoring(model, options) if llm is not None else None
    llm_thread = ThreadPoolExecutor(1, thread_name_prefix="minitf-study-llm") if llm is not None else None
    waiting: deque = deque()  # (record, future of explain_and_score) in neuron order

    def finish(record: dict) -> None:
        folder.save_record(record)
        (finished.partial if record.get("pending") else finished.done)[record["neuron"]] = record
        bar.update(len(finished.done) - bar.done, status=f"{record['neuron']}: done")

    def collect(block: bool) -> None:
        while waiting and (block or len(waiting) > 2 or waiting[0][1].done()):
            record, future = waiting.popleft()
            record["explanations"], pending = future.result()
            if pending:
                record["pending"] = pending
            finish(record)

    with stop_on_sigint(bar) as stop:
        try:
            for n in todo:
                if stop.is_set():
                    break
                record, traces = study_neuron(model, n, options, corpus, index, docs, llm is not None,
                                              lambda step, n=n: bar.update(status=f"{n}: {step}"), test_inputs,
                                              sets)
                if traces is None:
                    collect(block=True)  # keep the order of the records
                    finish(record)
                else:
                    waiting.append((record, llm_thread.submit(explain_and_score, llm, *traces, options.protocol,
                                                                   options.explain_prompts, scoring)))
                    collect(block=False)
            collect(block=True)
            if not stop.is_set():
                bar.finish()  # the bar's last state (off a terminal, its last plain line may be up to 15 s old)
        finally:
            if llm_thread is not None:
                llm_thread.shutdown(wait=True, cancel_futures=True)
            bar.end_line()
    if stop.is_set() and len(finished.done) < len(neurons):
        raise StudyInterrupted(f"study: interrupted after {len(finished.done)} of {len(neurons)} neurons; "
                               f"rerun the same command to continue (saved in {folder.neurons})")


def study_result(settings: dict, records: list[dict], complete: bool, llm, pending_heads: int,
                 skipped_reason: str | None, run: dict) -> dict:
    """study.json: the settings, the aggregates (``minitf.study.summary``) and each record's summary."""
    explanations = ("done" if not pending_heads else f"{pending_heads} differential heads left unexplained "
                    "(--max-calls)") if llm is not None else f"skipped: {skipped_reason}"
    return {"format": FORMAT, "version": VERSION, "settings": settings, "explanations": explanations,
            "complete": complete, "aggregates": aggregates(records, llm is not None, settings.get("protocol", "neo2024"),
                                                                settings.get("seed", 0)),
            "neurons": [summary_entry(r) for r in records], "run": run}


__all__ = ["StudyOptions", "StudyInterrupted", "StudyDir", "run_study", "select_neurons", "aggregates", "summary_lines",
           "read_neuron_list"]
