"""The model's commands: info, run, download, trace, report, neurons, index."""
from __future__ import annotations

import click

import minitf
from minitf.errors import MinitfError
from minitf.names import check_layer, check_neuron
from minitf.scores import DEFAULT as DEFAULT_SCORES
from minitf.util.fmt import count
from minitf.cli.options import (CACHE_DEFAULT, ablate_option, bos_option, cache_dir_option, corpus_option, emit_json,
    include_same_layer_option, index_dir_option, json_option, layers_option, main, model_option, n_prompts_option,
    neuron_option, neurons_protocol_options, no_progress_option, parsed_by, protocol_option, protocol_rule_option,
    scores_option, split_option, stacked)


@main.command()
@model_option
@json_option
def info(model_spec, as_json):
    """Shapes, dtype and parameter count of a model."""
    from minitf.report.info import model_info

    data = model_info(minitf.load(model_spec))
    if as_json:
        return emit_json(data)
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
        return emit_json(data)
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


trace_options = stacked(  # trace and report
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
        return emit_json(result.to_json())
    click.echo("\n".join(trace_lines(result)))



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
        return emit_json(result.to_json(model))
    click.echo("\n".join(neuron_table_lines(result, model.cfg.d_mlp)))


@main.command()
@model_option
@corpus_option(help="Corpus (.txt, .jsonl, .gz of either) [default: the model's corpus.txt.gz].")
@layers_option(help="Layers to index (repeatable; 3,5 or 2-4) [default: all].")
@split_option(default="all", help="Documents to index (all keeps train and test apart in one index).")
@click.option("--top-k", "k", default=30, show_default=True, type=click.IntRange(1, 10000),
              help="Top documents kept per neuron.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@stacked(bos_option(default=True, help="Prepend <|endoftext|> to each document."), index_dir_option)
@click.option("--rebuild", is_flag=True, help="Rebuild even if an up-to-date index exists.")
@click.option("--show", "show", multiple=True, callback=parsed_by(lambda v: [minitf.parse_neuron(x) for x in v]),
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
        return emit_json({"index": str(path), "manifest": m, "top": {name: [list(t) for t in rows]
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
