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


def aggregate(records: list[dict], explained: bool) -> dict:
    """The study's numbers over a group of neuron records (see the module docstring)."""
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
        "neurons_with_differential_heads": sum(1 for n in n_diff if n > 0),
        "differential_heads": sum(n_diff),
        "differential_heads_per_neuron": {**_dist(n_diff), "counts": {str(k): counts[k] for k in sorted(counts)}},
        "layer_distance": {str(k): distance[k] for k in sorted(distance)},
        "scores": {"balanced_accuracy": _scores(ba, n_skip_ba), "roc_auc": _scores(auc, n_skip_auc)}
        if explained else None,
        "ablation": {"pairs": sum(n_diff), "dp": _drops(*samples["dp"]), "dpost": _drops(*samples["dpost"])},
    }


def aggregates(records: list[dict], explained: bool) -> dict:
    layers = sorted({r["layer"] for r in records})
    return {"layers": {str(layer): aggregate([r for r in records if r["layer"] == layer], explained)
                       for layer in layers},
            "all": aggregate(records, explained)}


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
    had no prompt (no document activates them above 0) and count in no other column."""
    s = study["settings"]
    lines = [f"study of {len(study['neurons'])} neurons of {s['model']['folder']}: top {s['n_prompts']} "
             f"{s['split']} prompts each, rule {s['rule']}, explanations {study['explanations'].split(':')[0]}",
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
        lines.append(f"{name:<6}{a['neurons_traced']:>8}{a['neurons_without_prompts']:>8}{a['neurons_with_differential_heads']:>8}"
                     f"{_fmt(a['differential_heads_per_neuron']['mean'], '.2f'):>7}  {dist or '–':<15}{score:<20}"
                     f"{drops:<22}{'–' if ks is None else format(ks['statistic'], '.2f') + ' (' + format(ks['p_value'], '.1e') + ')'}")
    return [line.rstrip() for line in lines]
