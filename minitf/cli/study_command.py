"""``study``: the paper's experiments over many neurons, and ``study --compare``."""
from __future__ import annotations

import click

import minitf
from minitf.explain.llm import DEFAULT_LLM
from minitf.cli.options import (CACHE_DEFAULT, ablate_option, cache_dir_option, corpus_option, emit_json,
    include_same_layer_option, index_dir_option, json_option, layers_option, llm_options, main, model_option,
    n_prompts_option, no_progress_option, parsed_by, protocol_option, protocol_rule_option, scores_option, split_option,
    stacked, test_corpus_option)
from minitf.cli.options import baselines_option, scorers_option  # issue 24


def parse_study_exclude(values) -> tuple[list[str], str | None]:
    """``study --exclude``: (neuron names, "paper" | "none" | None) from "L9N2322,L10N7", "paper", "none"…; the
    names join the reject list (``paper``: the authors' list of this checkpoint; ``none``: no list; neither: the
    protocol's). ValueError for a malformed name or both words."""
    items = [v for v in ",".join(values).replace(" ", ",").split(",") if v]
    words = sorted({v for v in items if v in ("paper", "none")})
    if len(words) > 1:
        raise ValueError("paper, none: choose one")
    return [str(minitf.parse_neuron(v)) for v in items if v not in words], (words or [None])[0]


# issue 20: study's --exclude takes the reject list (paper|none) besides neuron names
study_exclude_option = click.option(
    "--exclude", multiple=True, callback=parsed_by(parse_study_exclude), metavar="NAMES|paper|none",
    help="Neurons to leave out (L9N2322,L10N7; repeatable), besides the reject list: paper (the authors' list of "
         "this checkpoint) or none [default: the protocol's: paper under neo2024/neo2023, none under minitf].")


@main.command()
@click.option("--out", default=None, type=click.Path(), help="Folder for study.json, the site and the resume state.")
@model_option
@layers_option(help="Layers to study (repeatable; 3,5 or 2-4) [default: all].")
@click.option("--per-layer", default=20, show_default=True, type=int, help="Most congruent neurons per layer.")
@study_exclude_option
@click.option("--neurons", "neurons_file", type=click.Path(dir_okay=False),
              help="Study exactly the neurons named in this file, one per line (then --layers/--per-layer are unused).")
@click.option("--min-count", default=0, show_default=True, type=click.IntRange(0),
              help="Neuron selection: only tokens seen ≥ N times in the corpus count (minitf's walk only: "
                   "--protocol minitf; refused with the authors' walk).")
@stacked(corpus_option(), index_dir_option)
@split_option()
@n_prompts_option(default=None, type=click.IntRange(2, 1000), show_default=False,
                  help="Top prompts per neuron [default: the protocol's: 20; 30 under neo2023].")
@protocol_rule_option
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
@stacked(  # issue 20: the paper's protocol, its random-neuron baseline, prompt-count ablation and comparison table
    protocol_option, test_corpus_option,
    click.option("--random-neurons", is_flag=True, help="The paper's baseline: --per-layer neurons drawn at random."),
    click.option("--seed", default=0, show_default=True, type=int,
                 help="Seed of --random-neurons, of the random-explanation baseline and of the bootstrap."),
    click.option("--explain-prompts", type=click.Choice(["10", "20", "30"]), default=None,
                 help="Explain from the first N train prompts only (the paper's prompt-count ablation)."),
    click.option("--compare", "compare", is_flag=True, help="Print the paper's table for the study folders DIRS."),
    click.argument("dirs", nargs=-1, type=click.Path(file_okay=False, exists=True)))
@stacked(scorers_option, baselines_option)  # issue 24: scorers beside the paper's, and its LLM baselines
def study(out, model_spec, layers, per_layer, exclude, neurons_file, min_count, corpus, split, n_prompts, rule,
          head_scores, include_same_layer, ablate, llm_model, base_url, max_calls, concurrency, timeout, max_retries,
          cache_dir, restart, no_progress, as_json, protocol, test_corpus, random_neurons, seed, explain_prompts,
          compare, dirs, paths, scorers, baselines):
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
                           layers=layers, per_layer=per_layer, exclude=exclude[0], exclude_list=exclude[1],
                           neurons_file=neurons_file, corpus=corpus, split=split, n_prompts=n_prompts, rule=rule,
                           scores=head_scores, include_same_layer=include_same_layer, min_count=min_count, ablate=ablate,
                           llm=llm_model, base_url=base_url, max_calls=max_calls, concurrency=concurrency,
                           timeout=timeout, max_retries=max_retries, cache_dir=cache_dir, paths=paths,
                           scorers=",".join(scorers), baselines=baselines)
    try:
        result = run_study(minitf.load(model_spec), out, options, restart=restart, progress=not no_progress,
                           say=lambda line: click.echo(line, err=True))
    except (StudyInterrupted, IndexInterrupted) as e:
        click.echo(str(e), err=True)
        raise
    if as_json:
        return emit_json(result)
    click.echo("\n".join(summary_lines(result)))
    click.echo(f"{out}/study.json, {out}/index.html: {len(result['neurons'])} neurons", err=True)
