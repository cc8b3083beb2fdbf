"""What each ``--scores`` mode means, written once: what selects heads, and what removing a head replaces z_h by.

A head's direct effect on the neuron is its context part (what it looked up) plus its constant part
((b_V + β₁W_V)·W_O through W_in, no token's content; ``minitf.attribution``):

    "paper": heads are selected and ranked by their context part — the authors' TransformerLens score (value
             biases folded) / σ — and the ablation replaces z_h by its constant part b_V + β₁W_V (what zeroing
             TransformerLens's ``hook_v`` on folded weights does): the paper's heads and ablation (the default);
    "exact": heads are selected and ranked by their whole effect (context + constant part), and the ablation
             zeroes z_h.
"""
from __future__ import annotations

from dataclasses import dataclass

from minitf.errors import MinitfError


@dataclass(frozen=True)
class ScoresMode:
    """One ``--scores`` mode: the per-head number that selects and ranks heads, and the ablation that goes with it."""

    name: str  # "paper" or "exact"
    selects: str  # the trace's per-head field that selects: "context" (the context part) or "effect" (the whole effect)
    score: str  # that number in words, as the views print it
    ablation_keeps_constant: bool  # the ablation replaces z_h by its constant part (True) or by zero (False)
    removed: str  # the ablation in words
    note: str  # the trace's settings.scores_note
    help: str  # the CLI's one line about the mode

    def mean(self, head) -> float:
        """The head record's mean selecting score (``mean_context`` or ``mean_effect``)."""
        return getattr(head, "mean_" + self.selects)

    def std(self, head) -> float:
        return getattr(head, "std_" + self.selects)

    def of(self, head) -> float:
        """A per-prompt head entry's selecting score (its ``context`` or its ``effect``)."""
        return getattr(head, self.selects)


MODES: dict[str, ScoresMode] = {m.name: m for m in (
    ScoresMode("paper", "context", "context part", True, "z replaced by its constant part",
               "heads selected on their context part: the paper's scores (TransformerLens, value biases folded) / σ",
               "each head's context part, the paper's scores (TransformerLens with value biases folded); "
               "the ablation replaces z by its constant part"),
    ScoresMode("exact", "effect", "direct effect", False, "z zeroed",
               "heads selected on their whole effect (context + constant part)",
               "each head's whole effect (context + constant part); the ablation zeroes z"),
)}
SCORES = tuple(MODES)  # ("paper", "exact")
DEFAULT = "paper"
CLI_HELP = "What selects and ranks heads: " + "; ".join(f"{m.name}: {m.help}" for m in MODES.values()) + "."


def scores_mode(name: str) -> ScoresMode:
    """The mode named ``name``; a MinitfError naming the choices for any other."""
    if name not in MODES:
        raise MinitfError(f"scores {name!r}: choose from {', '.join(SCORES)}")
    return MODES[name]
