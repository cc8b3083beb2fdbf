"""The LLM's commands: explain and score."""
from __future__ import annotations

import click

from minitf.explain.llm import DEFAULT_LLM
from minitf.util.fmt import count
from minitf.cli.options import (CACHE_DEFAULT, cache_dir_option, corpus_option, emit_json, head_option,
    include_same_layer_option, index_dir_option, json_option, llm_options, main, model_option, n_prompts_option,
    neuron_option, protocol_option, rule_option, scores_option, stacked, test_corpus_option)
from minitf.cli.options import baselines_option, scorers_option, seed_option  # issue 24


explain_options = stacked(  # explain and score
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
        return emit_json({"neuron": str(neuron), **out})
    click.echo("\n".join(explain_lines(neuron, out, rule, head_scores)))
    if llm is not None:
        click.echo(f"LLM: {count(llm.calls_made, 'call')}, {count(llm.cache_hits, 'cache hit')}; saved in {store.path}",
                   err=True)


@main.command()
@explain_options
@stacked(scorers_option, baselines_option, seed_option,  # issue 24: scorers, baselines, and their cost first
         click.option("--dry-run", is_flag=True, help="Print the LLM calls each scorer and baseline would make; "
                                                      "call nothing."))
@json_option
def score(neuron, model_spec, llm_model, base_url, max_calls, concurrency, timeout, max_retries, cache_dir, head_spec,
          n_prompts, rule, head_scores, include_same_layer, corpus, protocol, test_corpus, scorers, baselines, seed,
          dry_run, as_json):
    """Score the explanations: the LLM predicts, from each explanation alone, where the head is active (test split)."""
    from minitf.explain.baselines import call_lines, check_budget, count_calls, plan_score, result_lines, run_scorers
    from minitf.explain.driver import (get_protocol, llm_setup, render_summary, score_inputs, score_lines,
                                       score_tests, summarize_scores, test_prompts_line)
    from minitf.explain.scorers import ScoringContext

    model, llm, store = llm_setup(model_spec, neuron, cache_dir, llm_model, base_url, max_calls, concurrency, timeout,
                                  max_retries)
    inputs = score_inputs(model, neuron, store, head_spec, corpus=corpus, n_prompts=n_prompts, rule=rule,
                          scores=head_scores, include_same_layer=include_same_layer, protocol=protocol,
                          test_corpus=test_corpus)
    ctx = ScoringContext(model, str(neuron), inputs.test_trace.neuron.token.text, inputs.protocol.name, seed,
                         test=inputs.test_trace, corpus=corpus)
    calls = count_calls(llm, plan_score(inputs, scorers, ctx, seed=seed, baselines=baselines))
    if dry_run:
        if as_json:
            return emit_json({"neuron": str(neuron), "calls": [c.to_json() for c in calls]})
        return click.echo("\n".join(call_lines(calls)))
    check_budget(calls, max_calls)
    scores, skipped = score_tests(llm, store, inputs), inputs.skipped
    results = run_scorers(llm, inputs, scores, scorers, ctx, seed=seed, baselines=baselines)
    for head, by_scorer in results.items():
        store.update(head, scorers={name: r.to_json() for name, r in by_scorer.items()})
    summary = summarize_scores(scores)
    note = (f"protocol {protocol}: the first {get_protocol(protocol).n_test} test prompts, scoring "
            f"{get_protocol(protocol).scoring}; {test_prompts_line(protocol, test_corpus)}")
    if as_json:
        return emit_json({"neuron": str(neuron), "protocol": protocol, "test_prompts": note,
                           "scores": [s.to_dict(items=True) | {"scorers": {n: r.to_json() for n, r in
                                                                           results[s.head].items()}} for s in scores],
                           "skipped": skipped, "summary": summary.to_dict(),
                           "summary_roc_auc": summarize_scores(scores, "roc_auc").to_dict()})
    lines = [note]
    for line in score_lines(scores, skipped):  # each head's line, then its scorers' (value [95 % interval], baselines)
        lines.append(line)
        head = line.split(":")[0]
        lines += [x for r in results.get(head, {}).values() for x in result_lines(r)]
    click.echo("\n".join(lines + render_summary(summary)))
    click.echo(f"LLM: {count(llm.calls_made, 'call')}, {count(llm.cache_hits, 'cache hit')}", err=True)
