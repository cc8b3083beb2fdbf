"""The study's scorers beside the paper's number (issue 24): per pair, and aggregated per scorer.

Per scored (neuron, differential head) pair, ``record["explanations"][head]["scorers"]`` holds each scorer's
``ScorerResult`` (``minitf.explain.scorers``) as JSON: ``paper`` with its Beta-posterior interval, permutation
p-value and baselines (``minitf.explain.baselines``: constant answers always; with ``baselines`` the token-only
explanation, and a random explanation drawn over the whole study with the seed by :func:`random_explanations`
once every neuron is done), then each other scorer of ``scorers`` (``scorers.RUNNERS``).

Aggregated per scorer over a group of records (:func:`scorer_aggregates`): the distribution of its values, the
bootstrap over pairs of the mean and of the share ≥ 0.8 (``uncertainty.bootstrap_study``), Benjamini–Hochberg at
5 % across the pairs' p-values, the share of pairs whose 95 % interval lies above ½, and each baseline's
distribution.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from minitf.util.fmt import num as _fmt

SCORE_BINS = 10
FDR = 0.05
CHANCE = {"balanced_accuracy": 0.5, "roc_auc": 0.5}
"""A metric's value with no signal (a correlation's: 0)."""


# ---- per pair --------------------------------------------------------------------------------------------------
def pair_scoring(model, options) -> Callable:
    """``fn(llm, train, test, scored, done, pending) -> (done, pending)`` for ``explain_and_score``: the study's
    ``scorers`` on a neuron's pairs (``scored``: {head: (HeadScore, its test HeadExamples)}), each scored pair's
    results added to its ``done[head]["scorers"]``; a pair the ``max_calls`` budget leaves undone moves from ``done``
    to ``pending`` (in head order, redone by a rerun). ``options``: a ``StudyOptions``. With ``options.baselines`` the scorers past the
    paper's get their random explanation from another of the neuron's heads (the paper's: :func:`random_explanations`,
    over the whole study)."""
    from minitf.explain.baselines import donors_of, pair_results
    from minitf.explain.budget import BudgetExhausted
    from minitf.explain.scorers import PairToScore, ScoringContext, parse_scorers

    scorers = parse_scorers(options.scorers)

    def score(llm, train, test, scored: dict, done: dict, pending: list) -> tuple[dict, list[str]]:
        scored = {h: (s, x) for h, (s, x) in scored.items() if s.explanation and s.labels}
        donors = donors_of({h: s.explanation for h, (s, _) in scored.items()}, options.seed) if options.baselines else {}
        undone = []
        for h, (s, examples) in scored.items():
            try:
                ctx = ScoringContext(model, s.neuron, s.token, options.protocol, options.seed, train, test,
                                     options.corpus)
                pair = PairToScore(h, s.explanation, examples, *(donors.get(h) or (None, None)))
                results = pair_results(llm, s, pair, scorers, ctx, options.protocol, seed=options.seed,
                                       baselines=options.baselines)
                done[h]["scorers"] = {name: r.to_json() for name, r in results.items()}
            except BudgetExhausted:
                undone.append(h)
        return ({h: d for h, d in done.items() if h not in undone},
                [h for h in train.differential_heads if h in pending or h in undone])

    return score


def random_explanations(llm, records: list[dict], options, save, say) -> None:
    """With ``options.baselines``: each scored pair's random-explanation baseline, another pair's explanation of
    the whole study (``random_explanation_donors`` with ``options.seed``, over the pairs in neuron and head order:
    never the pair's own) scored on the pair's test prompts and labels; added to its ``paper`` result in place,
    and each changed record passed to ``save``. A spent ``max_calls`` budget leaves the rest without (said)."""
    from minitf.explain.baselines import scored_baseline, with_baselines
    from minitf.explain.budget import BudgetExhausted
    from minitf.explain.driver import score_explanation
    from minitf.explain.prompts import HeadExamples
    from minitf.explain.scorers import ScorerResult
    from minitf.explain.uncertainty import random_explanation_donors

    if not options.baselines or llm is None:
        return
    pairs = [(r, h, e) for r in records for h, e in sorted((r.get("explanations") or {}).items())
             if e.get("scorers") and e.get("items")]
    donors = random_explanation_donors([e["explanation"] for _, _, e in pairs], seed=options.seed)
    changed = {}
    for (r, h, e), d in zip(pairs, donors):
        if d is None:
            continue
        dr, dh, de = pairs[d]
        items = e["items"]
        test = HeadExamples(r["neuron"], h, e["token"], [i["prompt"] for i in items if i["label"] == 1],
                            [i["prompt"] for i in items if i["label"] == 0])
        try:
            s = score_explanation(llm, de["explanation"], test, options.protocol)
        except BudgetExhausted:
            say(f"--max-calls {options.max_calls} reached: random-explanation baselines left out from {r['neuron']} "
                f"{h} on; rerun with a higher --max-calls to add them (answers so far are cached)")
            break
        paper = ScorerResult.from_json(e["scorers"]["paper"])
        e["scorers"]["paper"] = with_baselines(paper, [scored_baseline("random_explanation", s,
                                                                       f"{dr['neuron']}/{dh}")]).to_json()
        changed[r["neuron"]] = r
    for r in changed.values():
        save(r)


# ---- aggregates --------------------------------------------------------------------------------------------------
def _distribution(values: list[float], low: float = 0.0) -> dict:
    """count, mean, std (N − 1), median and a ``SCORE_BINS``-bin histogram over [low, 1] (the last bin closed)."""
    x = np.asarray(values, np.float64)
    counts, edges = np.histogram(x, bins=SCORE_BINS, range=(low, 1.0))
    return {"count": int(x.size), "mean": float(x.mean()) if x.size else None,
            "std": float(x.std(ddof=1)) if x.size >= 2 else None, "median": float(np.median(x)) if x.size else None,
            "histogram": [{"low": float(a), "high": float(b), "count": int(c)}
                          for a, b, c in zip(edges[:-1], edges[1:], counts)]}


def scorer_aggregates(records: list[dict], seed: int = 0) -> dict | None:
    """{scorer: its aggregates} over the scored pairs of ``records`` (see the module docstring); None when no pair
    has a scorer's result (e.g. a study made before scorers existed, or without an LLM)."""
    from minitf.explain.uncertainty import benjamini_hochberg, bootstrap_study

    by_scorer: dict[str, list[tuple[str, dict]]] = {}
    for r in records:
        for h, e in sorted((r.get("explanations") or {}).items()):
            for name, res in (e.get("scorers") or {}).items():
                by_scorer.setdefault(name, []).append((f"{r['neuron']}/{h}", res))
    if not by_scorer:
        return None
    out = {}
    for name, results in by_scorer.items():
        scored = [(pair, res) for pair, res in results if res["value"] is not None]
        values = [res["value"] for _, res in scored]
        tested = [(pair, res["p_value"]) for pair, res in scored if res["p_value"] is not None]
        fdr = benjamini_hochberg([p for _, p in tested], fdr=FDR) if tested else None
        with_interval = [res for _, res in scored if res["interval"] is not None]
        chance = CHANCE.get(results[0][1]["metric"], 0.0)
        boot = bootstrap_study(values, seed=seed)
        baselines: dict[str, list[float]] = {}
        for _, res in scored:
            for b in res["baselines"]:
                if b["value"] is not None:
                    baselines.setdefault(b["name"], []).append(b["value"])
        out[name] = {
            "metric": results[0][1]["metric"], "pairs": len(results), "scored": len(scored),
            "distribution": _distribution(values, low=-1.0 if chance == 0.0 else 0.0),
            "bootstrap": None if boot is None else boot.to_json(),
            "fdr": None if fdr is None else {"level": FDR, "tested": len(tested), "rejected": fdr.n_rejected,
                                             "pairs": [pair for (pair, _), ok in zip(tested, fdr.rejected) if ok]},
            "above_chance": {"chance": chance, "with_interval": len(with_interval),
                             "share": (sum(res["interval"][0] > chance for res in with_interval) / len(with_interval)
                                       if with_interval else None)},
            "baselines": {b: _distribution(v, low=-1.0 if chance == 0.0 else 0.0) for b, v in baselines.items()},
        }
    return out


# ---- text --------------------------------------------------------------------------------------------------------
def scorer_lines(study: dict) -> list[str]:
    """The study table's scorer rows (over all pairs): per scorer its mean with the bootstrap interval, the share
    ≥ 0.8 with its interval, the share whose interval lies above ½, the pairs BH keeps at 5 %, and per baseline its
    mean ± std. None without scorer aggregates."""
    agg = study["aggregates"]["all"].get("scorers")
    if not agg:
        return []
    from minitf.explain.baselines import BASELINE_LABEL

    lines = ["", "scorers over all scored pairs (95 % bootstrap intervals over pairs; 'above chance': the pair's own 95 % "
                 "interval lies above ½ (a correlation's: above 0); BH: pairs better than chance at a 5 % false discovery rate)"]
    for name, a in agg.items():
        b = a["bootstrap"]
        if b is None:
            lines.append(f"  {name}: no scored pair")
            continue
        m, s = b["mean"], b["share"]
        above = a["above_chance"]["share"]
        bh = a["fdr"]
        lines.append(f"  {name}: mean {_fmt(m['estimate'])} [{_fmt(m['low'])}, {_fmt(m['high'])}], "
                     f"share ≥ {b['threshold']} {_fmt(s['estimate'], '.2f')} [{_fmt(s['low'], '.2f')}, "
                     f"{_fmt(s['high'], '.2f')}], above chance {_fmt(above, '.2f')}, "
                     f"BH {bh['rejected'] if bh else 0} of {bh['tested'] if bh else 0} (n {a['scored']})")
        if a["baselines"]:
            lines.append("    baselines: " + "; ".join(
                f"{BASELINE_LABEL.get(n, n)} {_fmt(d['mean'])}±{_fmt(d['std'])} (n {d['count']})"
                for n, d in a["baselines"].items()))
    return lines


def explain_and_score(llm, train, test, protocol: str = "neo2024", explain_prompts: int | None = None,
                      scoring=None) -> tuple[dict, list[str]]:
    """{head: HeadScore dict (with items)} for the train trace's differential heads, explained from the first
    ``explain_prompts`` prompts of ``train`` and scored on the first n_test (the protocol's) of ``test``
    (``explain.evaluate_head``, with the protocol's requests and scoring), and the heads left undone because the
    LLM's call budget (``max_calls``) ran out (their answers so far are cached). ``scoring`` (``minitf.study.scoring
    .pair_scoring``) adds each scored pair's ``"scorers"``."""
    from minitf.explain.budget import BudgetExhausted
    from minitf.explain.driver import evaluate_head, get_protocol, head_examples

    p = get_protocol(protocol)
    done, pending, scored = {}, [], {}
    for h in train.differential_heads:
        try:
            examples = head_examples(test, h, p.n_test)
            scored[h] = (evaluate_head(llm, head_examples(train, h, explain_prompts), examples, protocol=p), examples)
            done[h] = scored[h][0].to_dict(items=True)
        except BudgetExhausted:
            pending.append(h)
    return (done, pending) if scoring is None else scoring(llm, train, test, scored, done, pending)
