"""minitf's command line: it only parses and prints; the work is in the ``minitf`` package. Exit codes: 0 ok,
1 bad data (one line on stderr naming the file or argument), 2 usage error (one line too). Each shared option is
built once below; library errors name parameters (`n_prompts`), printed as the flags that set them (--n-prompts).
"""
from __future__ import annotations

import json
import re
import sys
from functools import partial

import click

import minitf
from minitf.explain.llm import DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_LLM, DEFAULT_TIMEOUT
from minitf.errors import MinitfError
from minitf.names import check_layer, check_neuron, parse_layers
from minitf.protocol import parse_exclude
from minitf.scores import CLI_HELP as SCORES_HELP, DEFAULT as DEFAULT_SCORES, SCORES
from minitf.util.fmt import count
from minitf.index.build import use_index_dir  # --index-dir's callback: sets $MINITF_INDEX_DIR


# ---- errors ------------------------------------------------------------------------------------------
_PARAM = re.compile(r"`(\w+)`")  # how a MinitfError names a parameter: `n_prompts`
_FLAG_OF = {"k": "--top-k", "neurons_file": "--neurons", "shard_chars": "--shard-kib"}  # where not --n-prompts


def flag_of(param: str) -> str:
    """The flag that sets a library parameter: ``n_prompts`` → ``--n-prompts``, ``k`` → ``--top-k``."""
    return _FLAG_OF.get(param, "--" + param.replace("_", "-"))


class _Group(click.Group):
    """Every error is one line on stderr, never a traceback: bad data or a failed step (MinitfError) exits 1,
    a malformed command line (click's UsageError: a missing option, ``--neuron L1X``) exits 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinitfError as e:
            click.echo(f"error: {self.in_flags(e)}", err=True)
            sys.exit(1)
        except click.UsageError as e:
            click.echo("error: " + " ".join(e.format_message().split()), err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    def in_flags(self, e: MinitfError) -> str:
        """The error's message with each parameter it names that a flag sets written as that flag."""
        flags = {flag for command in self.commands.values() for p in command.params for flag in p.opts}
        return _PARAM.sub(lambda m: flag_of(m[1]) if flag_of(m[1]) in flags else m[0], str(e))


@click.group(cls=_Group)
def main():
    """minitf: a small, exact, pure-NumPy GPT-2 that shows which attention heads switch on an MLP neuron."""


# ---- options: each built once here, used by every command that takes it --------------------------------
def _options(*options):
    """One decorator applying ``options`` in the order listed (as if stacked in that order)."""
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def _spec(parse):
    """A click callback parsing each value with ``parse``: a malformed one is a usage error (exit 2) in one line
    naming the flag, e.g. "--layer 2-1: reversed range (write 1-2)"."""
    def callback(ctx, param, value):
        try:
            return parse(value)
        except ValueError as e:
            raise click.UsageError(f"{param.opts[0]} {e}", ctx) from None
    return callback


model_option = click.option("--model", "model_spec", default=minitf.DEFAULT_MODEL, show_default=True,
                            help="Model folder, a name under weights/ (tiny, gpt2, …) or a Hugging Face cache entry.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
no_progress_option = click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
neuron_option = click.option("--neuron", required=True, callback=_spec(minitf.parse_neuron),
                             help="L10N2345, 10:2345 or blocks.10.mlp.hook_pre[2345].")
head_option = click.option("--head", "head_spec", default=None,
                           callback=_spec(lambda v: None if v is None else str(minitf.parse_head(v))),
                           help="Only this head (e.g. L1H10).")
scores_option = click.option("--scores", "head_scores", type=click.Choice(SCORES), default=DEFAULT_SCORES,
                             show_default=True, help=SCORES_HELP)
protocol_option = click.option(  # each choice it implies is in minitf.protocol; a flag given overrides one
    "--protocol", type=click.Choice(["neo2024", "neo2023", "minitf"]), default="neo2024", show_default=True,
    help="The paper's protocol: neo2024 (published), neo2023 (Oct 2023) or minitf's own (docs/protocols.md).")
test_corpus_option = click.option("--test-corpus", type=click.Path(dir_okay=False, exists=True), default=None,
                                  help="Mine the test prompts from this corpus, as the paper does [default: the "
                                       "corpus's test split].")
rule_option = click.option("--rule", type=click.Choice(["sigma2", "top3"]), default="sigma2", show_default=True,
                           help="Active heads: effect > mean + 2·std of the candidates (the paper's default), "
                                "or the top 3.")
include_same_layer_option = click.option("--include-same-layer", is_flag=True,
                                         help="Candidates include the neuron's own layer.")
exclude_option = click.option(  # L9N2322,L10N7 → names, each well formed (in range: the library checks)
    "--exclude", multiple=True, help="Neurons to leave out (L9N2322,L10N7; repeatable).",
    callback=_spec(lambda v: [str(minitf.parse_neuron(n)) for n in ",".join(v).replace(" ", ",").split(",") if n]))
# -- the protocol's options (trace, report, neurons): a flag left out means "the protocol's choice"
protocol_rule_option = click.option("--rule", type=click.Choice(["sigma2", "top3"]), default=None, help="Active "
                                    "heads: effect > mean + 2·std, or the top 3 [default: the protocol's].")
neurons_protocol_options = _options(
    protocol_option,
    click.option("--exclude", "exclude", default=None, metavar="paper|none", callback=_spec(parse_exclude),
                 help="The authors' reject list of this checkpoint, or none [default: the protocol's]."),
    click.option("--random-neurons", type=click.IntRange(0, 100000), default=0, help="Instead: N neurons per "
                 "layer drawn uniformly (the paper's random baseline)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random-neurons."))
# the options whose default or help differs by command: called with those, e.g. split_option(default="all")
layers_option = partial(click.option, "--layer", "--layers", "layers", multiple=True, callback=_spec(parse_layers))
corpus_option = partial(click.option, "--corpus", type=click.Path(dir_okay=False), default=None,
                        help="Corpus to mine prompts from [default: the model's corpus.txt.gz].")
split_option = partial(click.option, "--split", type=click.Choice(["train", "test", "all"]), default="train",
                       show_default=True)
n_prompts_option = partial(click.option, "--n-prompts", show_default=True)  # and type=click.IntRange(min, 1000)
bos_option = partial(click.option, "--bos/--no-bos", show_default=True)
ablate_option = partial(click.option, "--ablate", show_default=True, type=click.IntRange(0, 1000))
index_dir_option = click.option("--index-dir", type=click.Path(file_okay=False), envvar="MINITF_INDEX_DIR", expose_value=False,
    callback=use_index_dir, help="Where indexes are read and built [default: <corpus>.index/, then minitf's cache].")
cache_dir_option = partial(click.option, "--cache-dir", type=click.Path(file_okay=False), default=None)
CACHE_DEFAULT = "[default: $MINITF_CACHE_DIR or ~/.cache/minitf]"


def llm_options(llm_default: str | None, llm_help: str, max_calls_help: str):
    """The LLM client's options (explain, score, study); the defaults are ``minitf.explain.llm``'s."""
    return _options(
        click.option("--llm", "llm_model", default=llm_default, show_default=llm_default is not None, help=llm_help),
        click.option("--base-url", default=None,
                     help="OpenAI-compatible server [default: $OPENAI_BASE_URL or OpenAI]."),
        click.option("--max-calls", type=click.IntRange(0), default=None, help=max_calls_help),
        click.option("--concurrency", type=click.IntRange(1, 64), default=DEFAULT_CONCURRENCY, show_default=True),
        click.option("--timeout", type=click.FloatRange(0, min_open=True), default=DEFAULT_TIMEOUT, show_default=True,
                     help="Seconds to wait for each LLM request."),
        click.option("--max-retries", type=click.IntRange(0, 100), default=DEFAULT_MAX_RETRIES, show_default=True,
                     help="Retries after a connection error, timeout, 429 or 5xx (the openai client's backoff)."),
    )


def _emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@main.command()
@model_option
@json_option
def info(model_spec, as_json):
    """Shapes, dtype and parameter count of a model."""
    from minitf.report.info import model_info

    data = model_info(minitf.load(model_spec))
    if as_json:
        return _emit_json(data)
    for key, value in data.items():
        if key != "tensors":
            click.echo(f"{key:<14} {value}")
    click.echo("tensors:")
    for name, shape in data["tensors"].items():
        click.echo(f"  {name:<28} {shape}")


@main.command()
@model_option
@click.option("--text", required=True, help="The prompt.")
@click.option("--top", "top_k", default=10, show_default=True, type=click.IntRange(1, 1000))
@bos_option(default=False, help="Prepend <|endoftext|> to the prompt.")
@json_option
def run(model_spec, text, top_k, bos, as_json):
    """Top-k next-token predictions for a prompt."""
    from minitf.report.info import next_token_predictions

    data = next_token_predictions(minitf.load(model_spec), text, top_k, bos)
    if data["truncated"]:
        click.echo(f"note: --text is longer than the context: kept its last {data['n_tokens']} tokens", err=True)
    if as_json:
        return _emit_json(data)
    click.echo(f"prompt: {count(data['n_tokens'], 'token')}; next token:")
    for row in data["predictions"]:
        click.echo(f"  {row['prob']:7.2%}  {row['id']:>6}  {row['token']!r}")


@main.command()
@click.argument("name")
@click.option("--dest", type=click.Path(file_okay=False), default=str(minitf.WEIGHTS_DIR), show_default=True,
              help="Folder that receives <name>/.")
@click.option("--endpoint", default=None, help="Hub URL [default: $HF_ENDPOINT or https://huggingface.co].")
@no_progress_option
def download(name, dest, endpoint, no_progress):
    """Fetch a GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl) from the Hugging Face hub into weights/<name>/."""
    from pathlib import Path

    from minitf.load.hub import download as fetch

    folder = fetch(name, Path(dest), endpoint=endpoint, progress=not no_progress)
    click.echo(f"{folder}: ready; use --model {folder.name}")


def _trace(neuron, model_spec, texts, prompt_file, corpus, split, n_prompts, rule, include_same_layer, bos, ablate,
           per_position, scores=DEFAULT_SCORES, progress=True, why=False, protocol=None, **paths):
    """Load the model and trace the neuron (for trace and report); notes go to stderr."""
    from minitf.corpus import default_corpus
    from minitf.trace import PromptSource, TraceOptions, trace_neuron
    if texts and prompt_file:
        raise click.UsageError("give --text or --prompts, not both")
    model = minitf.load(model_spec)
    check_neuron(neuron, model.cfg.n_layer, model.cfg.d_mlp, where=f"--neuron {neuron}")
    if not texts and not prompt_file:
        corpus = default_corpus(model, corpus, needed_for="give --text, --prompts or --corpus")
    source = PromptSource(list(texts), prompt_file, corpus, split, n_prompts, bos, progress)
    options = TraceOptions(rule=rule, include_same_layer=include_same_layer, ablate=ablate, per_position=per_position,
                           scores=scores, why=why, protocol=protocol, **paths)  # --paths, --ablate-with
    result = trace_neuron(model, neuron, source=source, options=options)
    for note in result.settings.origin.notes or []:
        click.echo(f"note: {main.in_flags(MinitfError(note))}", err=True)
    return model, result


trace_options = _options(  # trace and report
    neuron_option,
    model_option,
    click.option("--text", "texts", multiple=True, help="A prompt to trace (repeatable)."),
    click.option("--prompts", "prompt_file", type=click.Path(dir_okay=False),
                 help="Prompts: .txt one per line, or .jsonl with 'text'."),
    corpus_option(),
    split_option(),
    n_prompts_option(default=None, type=click.IntRange(1, 1000), show_default=False,
                     help="Top prompts to mine [default: the protocol's, 20]."),
    protocol_rule_option,
    scores_option,
    include_same_layer_option,
    bos_option(default=True, help="Prepend <|endoftext|> to each prompt."),
    ablate_option(default=5, help="Ablate this many top heads by mean score (see --scores) and each differential head."),
    no_progress_option, index_dir_option,
    click.option("--why", is_flag=True, help="Why each listed head looked there: its score split (minitf.why)."),
    click.option("--paths", is_flag=True, help="Split each differential head's effect by path (minitf.paths)."),
    click.option("--ablate-with", type=click.Choice(["zero", "mean"]), default="zero", help="--paths' removal [zero]."),
    protocol_option,
)


@main.command()
@trace_options
@json_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write a self-contained HTML report (works offline) to this file.")
def trace(neuron, model_spec, texts, prompt_file, corpus, split, n_prompts, rule, head_scores, include_same_layer, bos,
          ablate, no_progress, why, protocol, as_json, html_path, **paths):
    """Which attention heads switch a neuron on: exact direct effects, looked-up tokens, ablation."""
    from minitf.report.text import trace_lines

    model, result = _trace(neuron, model_spec, texts, prompt_file, corpus, split, n_prompts, rule,
                           include_same_layer, bos, ablate, per_position=bool(html_path), scores=head_scores,
                           progress=not no_progress, why=why, protocol=protocol, **paths)
    if html_path:
        from minitf.report.page import report_extras, write_html

        write_html(html_path, result, *report_extras(model, neuron, result.settings.origin))
        click.echo(f"{html_path}: HTML report written", err=True)
    if as_json:
        return _emit_json(result.to_json())
    click.echo("\n".join(trace_lines(result)))


explain_options = _options(  # explain and score
    neuron_option,
    model_option,
    llm_options(DEFAULT_LLM, "LLM model name.", "At most this many LLM requests."),
    cache_dir_option(help=f"LLM cache and results {CACHE_DEFAULT}."),
    head_option,
    n_prompts_option(default=30, type=click.IntRange(2, 1000), help="Top prompts of the split to use."),
    rule_option,
    scores_option,
    include_same_layer_option,
    corpus_option(), index_dir_option,
    protocol_option,  # issue 20: the paper's protocol and test corpus (explain, score; study below)
    test_corpus_option,
)


@main.command()
@explain_options
@click.option("--dry-run", is_flag=True, help="Print the exact prompts; call nothing.")
@json_option
def explain(neuron, model_spec, llm_model, base_url, max_calls, concurrency, timeout, max_retries, cache_dir, head_spec,
            n_prompts, rule, head_scores, include_same_layer, corpus, protocol, test_corpus, dry_run, as_json):
    """Ask an LLM when each differential head of a neuron is active (prompts from the train split)."""
    from minitf.explain.driver import explain_lines, explain_neuron, llm_setup

    model, llm, store = llm_setup(model_spec, neuron, cache_dir, llm_model, base_url, max_calls, concurrency, timeout,
                                  max_retries, dry_run)
    out = explain_neuron(model, neuron, llm, store, head_spec, corpus=corpus, n_prompts=n_prompts, rule=rule,
                         scores=head_scores, include_same_layer=include_same_layer, protocol=protocol)
    if as_json:
        return _emit_json({"neuron": str(neuron), **out})
    click.echo("\n".join(explain_lines(neuron, out, rule, head_scores)))
    if llm is not None:
        click.echo(f"LLM: {count(llm.calls_made, 'call')}, {count(llm.cache_hits, 'cache hit')}; saved in {store.path}",
                   err=True)


@main.command()
@explain_options
@json_option
def score(neuron, model_spec, llm_model, base_url, max_calls, concurrency, timeout, max_retries, cache_dir, head_spec,
          n_prompts, rule, head_scores, include_same_layer, corpus, protocol, test_corpus, as_json):
    """Score the explanations: the LLM predicts, from each explanation alone, where the head is active (test split)."""
    from minitf.explain.driver import (get_protocol, llm_setup, render_summary, score_lines, score_neuron,
                                       summarize_scores, test_prompts_line)

    model, llm, store = llm_setup(model_spec, neuron, cache_dir, llm_model, base_url, max_calls, concurrency, timeout,
                                  max_retries)
    scores, skipped = score_neuron(model, neuron, llm, store, head_spec, corpus=corpus, n_prompts=n_prompts,
                                   rule=rule, scores=head_scores, include_same_layer=include_same_layer,
                                   protocol=protocol, test_corpus=test_corpus)
    summary = summarize_scores(scores)
    note = (f"protocol {protocol}: the first {get_protocol(protocol).n_test} test prompts, scoring "
            f"{get_protocol(protocol).scoring}; {test_prompts_line(protocol, test_corpus)}")
    if as_json:
        return _emit_json({"neuron": str(neuron), "protocol": protocol, "test_prompts": note,
                           "scores": [s.to_dict(items=True) for s in scores],
                           "skipped": skipped, "summary": summary.to_dict(),
                           "summary_roc_auc": summarize_scores(scores, "roc_auc").to_dict()})
    click.echo("\n".join([note] + score_lines(scores, skipped) + render_summary(summary)))
    click.echo(f"LLM: {count(llm.calls_made, 'call')}, {count(llm.cache_hits, 'cache hit')}", err=True)


@main.command()
@trace_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@cache_dir_option(help=f"Where explain/score saved their results {CACHE_DEFAULT}.")
def report(out, cache_dir, neuron, model_spec, texts, prompt_file, corpus, split, n_prompts, rule, head_scores,
           include_same_layer, bos, ablate, no_progress, why, protocol, **paths):
    """A self-contained HTML report of a trace (the same options as trace): one file that works offline."""
    from minitf.report.page import report_extras, write_html

    model, result = _trace(neuron, model_spec, texts, prompt_file, corpus, split, n_prompts, rule,
                           include_same_layer, bos, ablate, per_position=True, scores=head_scores,
                           progress=not no_progress, why=why, protocol=protocol, **paths)
    write_html(out, result, *report_extras(model, neuron, result.settings.origin, cache_dir))
    click.echo(f"{out}: HTML report of {neuron}, {count(len(result.prompts), 'prompt')}")


@main.command()
@model_option
@layers_option(help="Layers to show (repeatable; 3,5 or 2-4) [default: all].")
@click.option("--top", "top", default=10, show_default=True, type=click.IntRange(1, 100000),
              help="Most congruent neurons per layer.")
@click.option("--tokens", "n_tokens", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Promoted / suppressed tokens per neuron.")
@click.option("--no-filter", is_flag=True, help="Rank by all tokens, not only ' word' tokens (space + ≥ 2 chars).")
@click.option("--min-count", "min_count", default=0, show_default=True, type=click.IntRange(0),
              help="Only tokens seen ≥ N times in the corpus count (0: off, the paper's behaviour).")
@corpus_option(help="Corpus for --min-count [default: the model's corpus.txt.gz].")
@json_option
@neurons_protocol_options
def neurons(model_spec, layers, top, n_tokens, no_filter, min_count, corpus, as_json, protocol, exclude,
            random_neurons, seed):
    """Next-token neurons: each layer's neurons ranked by congruence max_t W_out[n]·W_U′[:, t]."""
    from minitf.report.text import neuron_table_lines
    from minitf.selection import neuron_tables

    model = minitf.load(model_spec)
    for layer in layers:
        check_layer(layer, model.cfg.n_layer, where="--layer")
    result = neuron_tables(model, layers or range(model.cfg.n_layer), top, n_tokens, protocol, exclude,
                           not no_filter, min_count, corpus, random_neurons, seed)
    if as_json:
        return _emit_json(result.to_json(model))
    click.echo("\n".join(neuron_table_lines(result, model.cfg.d_mlp)))


@main.command()
@model_option
@corpus_option(help="Corpus (.txt, .jsonl, .gz of either) [default: the model's corpus.txt.gz].")
@layers_option(help="Layers to index (repeatable; 3,5 or 2-4) [default: all].")
@split_option(default="all", help="Documents to index (all keeps train and test apart in one index).")
@click.option("--top-k", "k", default=30, show_default=True, type=click.IntRange(1, 10000),
              help="Top documents kept per neuron.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@_options(bos_option(default=True, help="Prepend <|endoftext|> to each document."), index_dir_option)
@click.option("--rebuild", is_flag=True, help="Rebuild even if an up-to-date index exists.")
@click.option("--show", "show", multiple=True, callback=_spec(lambda v: [minitf.parse_neuron(x) for x in v]),
              help="Print this neuron's top documents (repeatable).")
@no_progress_option
@click.option("--ray", "ray_address", default=None, metavar="auto|ADDRESS",
              help="Run the shards on a Ray cluster (one actor per CPU; needs the cluster extra).")
@click.option("--shard-kib", default=None, type=click.IntRange(1, 1 << 20),
              help="KiB of text per shard (the unit of work and of resuming; equal builds need equal values) "
                   "[default: 32].")
@json_option
def index(model_spec, corpus, layers, split, k, workers, bos, rebuild, show, no_progress, ray_address,
          shard_kib, as_json):
    """Index a corpus: each neuron's top-k documents, positive count and activation histogram (resumable)."""
    from minitf.corpus import default_corpus, tokenized_documents
    from minitf.index.build import IndexInterrupted, build_index, load_index

    model = minitf.load(model_spec)
    corpus = default_corpus(model, corpus, needed_for="give --corpus FILE")
    try:
        path = build_index(model, corpus, layers=layers or None, k=k, split=split, workers=workers,
                           progress=not no_progress, bos=bos, rebuild=rebuild,
                           ray=ray_address, shard_chars=shard_kib and shard_kib * 1024)
    except IndexInterrupted as e:
        click.echo(str(e), err=True)
        raise
    idx = load_index(model, corpus, path.parent)
    m = idx.manifest
    tops = {str(n): idx.top(n) for n in show}
    if as_json:
        return _emit_json({"index": str(path), "manifest": m, "top": {name: [list(t) for t in rows]
                                                                        for name, rows in tops.items()}})
    docs, tokens = sum(m["documents"].values()), sum(m["tokens"].values())
    click.echo(f"{path}: {count(docs, 'document')} ({m['documents']['train']} train, {m['documents']['test']} test), "
               f"{tokens:,} tokens, layers {m['layers']}, top {m['k']} per neuron; built in {m['build']['seconds']:.1f} s")
    if not show:
        return
    docs = tokenized_documents(model, corpus, {d for rows in tops.values() for d, _, _ in rows}, idx.bos)
    for n in show:
        click.echo(f"\n{n}: top documents ({idx.positive_count(n):,} of {idx.positions():,} positions positive)")
        for d, p, a in tops[str(n)]:
            ids = docs[d]
            context = model.decode(ids[max(int(idx.bos), p - 12): p]).replace("\n", "⏎")
            click.echo(f"  {a:8.3f}  doc {d:>6} pos {p:>4}  …{context}[[{model.token_str(ids[p])}]]")


@main.command()
@click.option("--out", default=None, type=click.Path(), help="Folder for study.json, the site and the resume state.")
@model_option
@layers_option(help="Layers to study (repeatable; 3,5 or 2-4) [default: all].")
@click.option("--per-layer", default=20, show_default=True, type=int, help="Most congruent neurons per layer.")
@exclude_option
@click.option("--neurons", "neurons_file", type=click.Path(dir_okay=False),
              help="Study exactly the neurons named in this file, one per line (then --layers/--per-layer are unused).")
@click.option("--min-count", default=0, show_default=True, type=click.IntRange(0),
              help="Neuron selection: only tokens seen ≥ N times in the corpus count (0: the paper's filter only).")
@_options(corpus_option(), index_dir_option)
@split_option()
@n_prompts_option(default=20, type=click.IntRange(2, 1000), help="Top prompts per neuron.")
@rule_option
@scores_option
@include_same_layer_option
@ablate_option(default=0, help="Also ablate this many top heads per neuron (every differential head always is).")
@llm_options(None, f"LLM for explanations [default: {DEFAULT_LLM} when --base-url or OPENAI_API_KEY is set, "
                   "else none].", "At most this many LLM requests in all.")
@cache_dir_option(help=f"LLM cache {CACHE_DEFAULT}.")
@click.option("--restart", is_flag=True, help="Start over in --out, discarding an earlier study there.")
@no_progress_option
@json_option
@click.option("--paths", is_flag=True, help="Also split each differential head's effect by path (costs reruns).")
@_options(  # issue 20: the paper's protocol, its random-neuron baseline, prompt-count ablation and comparison table
    protocol_option, test_corpus_option,
    click.option("--random-neurons", is_flag=True, help="The paper's baseline: --per-layer neurons drawn at random."),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed of --random-neurons."),
    click.option("--explain-prompts", type=click.Choice(["10", "20", "30"]), default=None,
                 help="Explain from the first N train prompts only (the paper's prompt-count ablation)."),
    click.option("--compare", "compare", is_flag=True, help="Print the paper's table for the study folders DIRS."),
    click.argument("dirs", nargs=-1, type=click.Path(file_okay=False, exists=True)))
def study(out, model_spec, layers, per_layer, exclude, neurons_file, min_count, corpus, split, n_prompts, rule,
          head_scores, include_same_layer, ablate, llm_model, base_url, max_calls, concurrency, timeout, max_retries,
          cache_dir, restart, no_progress, as_json, protocol, test_corpus, random_neurons, seed, explain_prompts,
          compare, dirs, paths):
    """The paper's experiments over many neurons: trace, ablate, explain and score; aggregates and a site (resumable)."""
    from minitf.index.build import IndexInterrupted
    from minitf.study.run import StudyInterrupted, StudyOptions, run_study, summary_lines

    if compare or dirs:
        from minitf.study.summary import compare_lines

        return click.echo("\n".join(compare_lines(dirs)))
    if out is None:
        raise click.UsageError("--out is required (or --compare DIR DIR…)")
    options = StudyOptions(protocol=protocol, test_corpus=test_corpus, random_neurons=random_neurons, seed=seed,
                           explain_prompts=int(explain_prompts) if explain_prompts else None,
                           layers=layers, per_layer=per_layer, exclude=exclude,
                           neurons_file=neurons_file, corpus=corpus, split=split, n_prompts=n_prompts, rule=rule,
                           scores=head_scores, include_same_layer=include_same_layer, min_count=min_count, ablate=ablate,
                           llm=llm_model, base_url=base_url, max_calls=max_calls, concurrency=concurrency,
                           timeout=timeout, max_retries=max_retries, cache_dir=cache_dir, paths=paths)
    try:
        result = run_study(minitf.load(model_spec), out, options, restart=restart, progress=not no_progress,
                           say=lambda line: click.echo(line, err=True))
    except (StudyInterrupted, IndexInterrupted) as e:
        click.echo(str(e), err=True)
        raise
    if as_json:
        return _emit_json(result)
    click.echo("\n".join(summary_lines(result)))
    click.echo(f"{out}/study.json, {out}/index.html: {len(result['neurons'])} neurons", err=True)


if __name__ == "__main__":
    main()
