"""A study's numbers: the aggregates of ``study.json`` (per layer and over all neurons) and the printed table.

Over the per-neuron records of ``minitf.study.run``: neurons, neurons with ≥ 1 differential head, differential
heads per neuron, the layer distance l − l_h between each differential head and its neuron, the explanation
scores (mean ± std, median, histogram, how many skipped), and the per-prompt drops when a differential head
is removed, pooled over every (neuron, head) pair, on prompts where the head is active vs inactive: means,
medians and the two-sample KS statistic D = sup |F_active − F_inactive| with its p-value.
"""
from __future__ import annotations

import numpy as np

from minitf.ablation import ks_2samp
from minitf.heads import both_classes
from minitf.names import parse_head
from minitf.util.fmt import num as _fmt
from minitf.trace import Trace
from minitf.study.scoring import scorer_aggregates, scorer_lines

SCORE_BINS = 10  # explanation-score histogram bins over [0, 1]


# ---- aggregates over the neurons' records --------------------------------------------------------------
def _dist(values) -> dict:
    """count, mean, std (N − 1), median of a list of numbers (None where undefined)."""
    x = np.asarray(values, np.float64)
    return {"count": int(x.size), "mean": float(x.mean()) if x.size else None,
            "std": float(x.std(ddof=1)) if x.size >= 2 else None,
            "median": float(np.median(x)) if x.size else None}


def _scores(values: list[float], n_skipped: int) -> dict:
    from minitf.explain.driver import summarize

    s = summarize(values, n_bins=SCORE_BINS, n_skipped=n_skipped)
    return {**_dist(values), "n_skipped": n_skipped,
            "histogram": [{"low": lo, "high": hi, "count": c} for lo, hi, c in s.bins]}


def _drops(active: list[float], inactive: list[float]) -> dict:
    out = {"active": _dist(active), "inactive": _dist(inactive), "ks": None}
    if both_classes(len(active), len(inactive)) is None:
        d, p = ks_2samp(np.array(active), np.array(inactive))
        out["ks"] = {"statistic": d, "p_value": p}
    return out


def paper(records: list[dict], explained: bool, n_test: int) -> dict:
    """The paper's aggregates over a group of records (notebooks 7 and 8): over the scored (neuron, differential
    head) pairs, the scores' ``paper_aggregates`` (mean ± population std, skew, skewtest p, share ≥ 0.8 / 0.9)
    and plain accuracy (tp + tn) / (tp + tn + fp + fn); the ablation per pair (``pair_ablation``: mean Δp on
    its active and its inactive prompts) on the first ``n_test`` test prompts (the test trace's, where the study
    made one; else the train prompts, said in ``prompts``), compared across pairs (``paired_ks``); and the mean
    clean p(token) over those test prompts."""
    from dataclasses import asdict

    from minitf.explain.metrics import Confusion, paired_ks, pair_ablation, paper_aggregates, plain_accuracy

    scores, plain, pairs, p_clean, where = [], [], [], [], set()
    for r in records:
        if "trace" not in r:
            continue
        for h in Trace.from_json(r["trace"], f"{r['neuron']}: trace").differential_heads:
            e = (r.get("explanations") or {}).get(h)
            if e is not None and e.get("explanation") is not None:
                scores.append(e["balanced_accuracy"])  # None: dropped (the protocol's scoring)
                plain.append(plain_accuracy(Confusion(e["tp"], e["fp"], e["tn"], e["fn"])))
            test = (r.get("test_ablation_samples") or {}).get(h)
            s = test if test is not None else r["ablation_samples"][h]
            where.add("test" if test is not None else "train")
            n = n_test if test is not None else None
            pairs.append(pair_ablation(r["neuron"], h, s["dp"][:n], s["active"][:n]))
            p_clean += (test or {}).get("p_clean", [])[:n_test]
    plain = [x for x in plain if x is not None]
    finite = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)  # skew of equal values: nan → None
              for k, v in asdict(paper_aggregates(scores)).items()}
    return {"scores": finite if explained else None,
            "plain_accuracy": (float(np.mean(plain)) if plain else None) if explained else None,
            "ablation": {"prompts": "+".join(sorted(where)) or None, "pairs": len(pairs),
                         **asdict(paired_ks(pairs))},
            "p_clean_mean": float(np.mean(p_clean)) if p_clean else None}


def aggregate(records: list[dict], explained: bool, n_test: int = 10, seed: int = 0) -> dict:
    """The study's numbers over a group of neuron records (see the module docstring): minitf's (pooled
    ablation drops, scores with N − 1) and, under ``"paper"``, the paper's (``paper``)."""
    traced = [r for r in records if "trace" in r]
    diffs = [Trace.from_json(r["trace"], f"{r['neuron']}: trace").differential_heads for r in traced]
    n_diff = [len(d) for d in diffs]
    distance: dict[int, int] = {}
    samples = {"dp": ([], []), "dpost": ([], [])}
    ba, auc, n_skip_ba, n_skip_auc = [], [], 0, 0
    for r, heads in zip(traced, diffs):
        for h in heads:
            gap = r["layer"] - parse_head(h).layer
            distance[gap] = distance.get(gap, 0) + 1
            s = r["ablation_samples"][h]
            for key, (act, inact) in samples.items():
                act += [v for v, a in zip(s[key], s["active"]) if a]
                inact += [v for v, a in zip(s[key], s["active"]) if not a]
            e = (r.get("explanations") or {}).get(h)
            if e is not None and not e["skipped"] and e["balanced_accuracy"] is not None:
                ba.append(e["balanced_accuracy"])
            else:
                n_skip_ba += 1
            if e is not None and not e["skipped"] and e["roc_auc"] is not None:
                auc.append(e["roc_auc"])
            else:
                n_skip_auc += 1
    counts: dict[int, int] = {}
    for n in n_diff:
        counts[n] = counts.get(n, 0) + 1
    return {
        "neurons": len(records), "neurons_traced": len(traced), "neurons_without_prompts": len(records) - len(traced),
        "studied": len(traced), "skipped": len(records) - len(traced),  # issue 25: skipped = no document activates it
        "neurons_with_differential_heads": sum(1 for n in n_diff if n > 0),
        "differential_heads": sum(n_diff),
        "differential_heads_per_neuron": {**_dist(n_diff), "counts": {str(k): counts[k] for k in sorted(counts)}},
        "layer_distance": {str(k): distance[k] for k in sorted(distance)},
        "scores": {"balanced_accuracy": _scores(ba, n_skip_ba), "roc_auc": _scores(auc, n_skip_auc)}
        if explained else None,
        "ablation": {"pairs": sum(n_diff), "dp": _drops(*samples["dp"]), "dpost": _drops(*samples["dpost"])},
        "paper": paper(records, explained, n_test),
        **({"scorers": sc} if explained and (sc := scorer_aggregates(records, seed)) else {}),  # issue 24
    }


def aggregates(records: list[dict], explained: bool, protocol: str = "neo2024", seed: int = 0) -> dict:
    """Per layer and over all: ``aggregate`` (minitf's pooled numbers, and the paper's under "paper", its
    ablation on the protocol's first n_test test prompts)."""
    from minitf.protocol import get_protocol

    n_test = get_protocol(protocol).n_test
    layers = sorted({r["layer"] for r in records})
    return {"layers": {str(layer): aggregate([r for r in records if r["layer"] == layer], explained, n_test, seed)
                       for layer in layers},
            "all": aggregate(records, explained, n_test, seed),
            **({"paths": p} if (p := paths_aggregate(records)) is not None else {})}  # study --paths only


# ---- study --paths: the mediated fractions over (neuron, differential head) pairs (minitf.paths) ----------
def _quartiles(values) -> dict:
    """count, mean, median, first and third quartile of a list of numbers (None where there is none)."""
    x = np.asarray(values, np.float64)
    q1, med, q3 = np.percentile(x, [25, 50, 75]).tolist() if x.size else (None, None, None)
    return {"count": int(x.size), "mean": float(x.mean()) if x.size else None, "median": med, "q1": q1, "q3": q3}


def paths_aggregate(records: list[dict]) -> dict | None:
    """Over every (neuron, differential head) pair with a path split (``study --paths``): the distribution of the
    mediated fraction Σ direct / Σ total of Δpost and of Δp, over all the neuron's prompts and over those where
    the head is active and inactive (pairs where it is undefined — a zero total, no such prompt — left out).
    None when no record has a path split."""
    with_paths = [Trace.from_json(r["trace"], f"{r['neuron']}: trace").paths for r in records if "trace" in r]
    heads = [h for p in with_paths if p is not None for h in p.heads]
    if not any(p is not None for p in with_paths):
        return None
    out = {"pairs": len(heads)}
    for key in ("dpost", "dp"):
        out[key] = {}
        for group, attr in (("all", "mediated_fraction"), ("active", "mediated_fraction_active"),
                            ("inactive", "mediated_fraction_inactive")):
            values = [getattr(f, key) for h in heads if (f := getattr(h, attr)) is not None]
            out[key][group] = _quartiles([v for v in values if v is not None])
    return out


def paths_lines(study: dict) -> list[str]:
    """The printed lines of ``paths_aggregate`` (none without it)."""
    agg = study["aggregates"].get("paths")
    if not agg:
        return []
    lines = [f"mediated fraction direct / total over {agg['pairs']} (neuron, differential head) pairs: "
             "median [q1, q3] (mean)"]
    for key, name in (("dpost", "Δpost"), ("dp", "Δp")):
        parts = [f"{g} {_fmt(d['median'], '.2f')} [{_fmt(d['q1'], '.2f')}, {_fmt(d['q3'], '.2f')}] "
                 f"({_fmt(d['mean'], '.2f')}, n {d['count']})" for g, d in agg[key].items()]
        lines.append(f"  {name:<6}" + "; ".join(parts))
    return lines


def summary_entry(record: dict) -> dict:
    """A neuron's entry in study.json: everything but the per-prompt detail (kept in neurons/<name>.json)."""
    out = {k: v for k, v in record.items() if k not in ("trace", "histogram")}
    if "trace" in record:
        t = Trace.from_json(record["trace"], f"{record['neuron']}: trace")
        out["card"] = t.neuron.to_json()
        out |= {"n_prompts": len(t.prompts), "settings": t.settings.to_json(), "heads": [h.to_json() for h in t.heads],
                "differential_heads": t.differential_heads, "identity_check": t.identity_check.to_json()}
    return out


# ---- text ----------------------------------------------------------------------------------------------
def summary_lines(study: dict) -> list[str]:
    """The printed table: one row per layer and one for all neurons; "studied" neurons were traced, "skipped" ones
    had no prompt (no document activates them above 0, or none survives the authors' trimming) and count in no
    other column."""
    s = study["settings"]
    lines = [f"study of {len(study['neurons'])} neurons of {s['model']['folder']}: protocol "
             f"{s.get('protocol', 'minitf')}, top {s['n_prompts']} {s['split']} prompts each, rule {s['rule']}, "
             f"explanations {study['explanations'].split(':')[0]}",
             f"{'layer':<6}{'studied':>8}{'skipped':>8}{'w/ diff':>8}{'diff/n':>7}  {'distance 1,2,…':<15}"
             f"{'score ± std (n)':<20}{'Δp active / inactive':<22}KS D (p)"]
    groups = list(study["aggregates"]["layers"].items()) + [("all", study["aggregates"]["all"])]
    for name, a in groups:
        dist = ",".join(str(a["layer_distance"].get(str(d), 0))
                        for d in range(1, 1 + max([int(k) for k in a["layer_distance"]] or [0])))
        sc = a["scores"]["balanced_accuracy"] if a["scores"] else None
        score = "–" if sc is None else f"{_fmt(sc['mean'])}±{_fmt(sc['std'])} ({sc['count']})"
        dp = a["ablation"]["dp"]
        ks = dp["ks"]
        drops = f"{_fmt(dp['active']['mean'], '+.1e')} / {_fmt(dp['inactive']['mean'], '+.1e')}"
        lines.append(f"{name:<6}{a['neurons_traced']:>8}{a['neurons_without_prompts']:>8}"
                     f"{a['neurons_with_differential_heads']:>8}"
                     f"{_fmt(a['differential_heads_per_neuron']['mean'], '.2f'):>7}  {dist or '–':<15}{score:<20}"
                     f"{drops:<22}{'–' if ks is None else format(ks['statistic'], '.2f') + ' (' + format(ks['p_value'], '.1e') + ')'}")
    lines += paths_lines(study)  # study --paths
    lines += scorer_lines(study)  # issue 24: per scorer, its intervals and baselines
    lines += [""] + paper_lines(study)
    return [line.rstrip() for line in lines]


def paper_lines(study: dict) -> list[str]:
    """The paper's aggregates per layer and over all (``paper``), beside minitf's pooled table above."""
    lines = ["the paper's aggregates (scores over pairs: mean ± std (population), skew, skewtest p (H1: skew > 0), "
             "plain accuracy, share ≥ 0.8 / ≥ 0.9; ablation per pair on the "
             f"{study['aggregates']['all']['paper']['ablation']['prompts'] or '–'} prompts: mean Δp active / "
             "inactive, KS D (p) across pairs; mean clean p(token))",
             f"{'layer':<6}{'score ± std (n)':<20}{'skew':>6}{'p':>9}{'plain':>7}{'≥0.8':>6}{'≥0.9':>6}  "
             f"{'Δp act / inact (pairs)':<28}{'KS D (p)':<16}p(token)"]
    groups = list(study["aggregates"]["layers"].items()) + [("all", study["aggregates"]["all"])]
    for name, a in groups:
        p, ab = a["paper"], a["paper"]["ablation"]
        sc = p["scores"] or {}
        score = "–" if not sc.get("count") else f"{_fmt(sc['mean'])}±{_fmt(sc['std'])} ({sc['count']})"
        ks = "–" if ab["d"] is None else f"{ab['d']:.2f} ({ab['p']:.1e})"
        lines.append(f"{name:<6}{score:<20}{_fmt(sc.get('skew'), '.2f'):>6}{_fmt(sc.get('skewtest_p'), '.1e'):>9}"
                     f"{_fmt(p['plain_accuracy'], '.2f'):>7}{_fmt(sc.get('share_08'), '.2f'):>6}"
                     f"{_fmt(sc.get('share_09'), '.2f'):>6}  "
                     f"{_fmt(ab['mean_active'], '+.1e') + ' / ' + _fmt(ab['mean_inactive'], '+.1e') + ' (' + str(ab['pairs']) + ')':<28}"
                     f"{ks:<16}{_fmt(p['p_clean_mean'], '.3f')}")
    return [line.rstrip() for line in lines]


def compare_lines(dirs) -> list[str]:
    """``study --compare DIR DIR…``: the paper's comparison table (e.g. next-token vs random neurons), one row per
    study folder, over all its scored pairs: scores mean ± std, skew, skewtest p, plain accuracy, share ≥ 0.8 /
    ≥ 0.9 (``paper``)."""
    import json
    from pathlib import Path

    from minitf.errors import MinitfError

    if len(dirs) < 1:
        raise MinitfError("`compare`: give one or more study folders", param="compare")
    width = max(len(str(d)) for d in dirs) + 2
    lines = [f"{'study':<{width}}{'protocol':<10}{'neurons':<9}{'pairs':>6}  {'score ± std':<14}{'skew':>6}"
             f"{'skewtest p':>11}{'plain':>7}{'≥0.8':>6}{'≥0.9':>6}"]
    for d in dirs:
        path = Path(d) / "study.json"
        try:
            study = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MinitfError(f"`compare` {d}: no readable study.json ({e})", param="compare") from None
        s, a = study["settings"], study["aggregates"]["all"]["paper"]
        sc = a["scores"] or {}
        kind = "random" if s.get("random_neurons") else ("file" if s.get("neurons_file") else "top")
        score = "–" if not sc.get("count") else f"{_fmt(sc['mean'])}±{_fmt(sc['std'])}"
        lines.append(f"{str(d):<{width}}{s.get('protocol', 'minitf'):<10}{kind:<9}{sc.get('count', 0):>6}  "
                     f"{score:<14}{_fmt(sc.get('skew'), '.2f'):>6}{_fmt(sc.get('skewtest_p'), '.1e'):>11}"
                     f"{_fmt(a['plain_accuracy'], '.2f'):>7}{_fmt(sc.get('share_08'), '.2f'):>6}"
                     f"{_fmt(sc.get('share_09'), '.2f'):>6}")
    return [line.rstrip() for line in lines]
