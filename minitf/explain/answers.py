"""Parsing the LLM's Yes/No answers (see ``minitf.explain.driver``): the answer word and ``P(Yes)`` from log-probabilities;
and the simulation scorer's 0–10 (:func:`parse_simulation`)."""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import Any, Sequence

_STRIP = string.whitespace + string.punctuation
SIMULATION_SCALE = (0, 10)
"""The simulation scorer's answers: whole numbers from 0 (the head does not drive the neuron) to 10."""
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")


def normalize_answer(text: str) -> int | None:
    """``1`` for yes, ``0`` for no, ``None`` (malformed) for anything else.

    The first word of ``text`` is taken, surrounding whitespace and punctuation stripped and
    case-folded: ``" Yes"``, ``"YES."``, ``"yes,"`` → 1; ``"No"`` → 0; ``"Maybe"``, ``""``,
    ``"Y"`` → None. A malformed answer is never counted as No.
    """
    words = text.split()
    if not words:
        return None
    word = words[0].strip(_STRIP).casefold()
    return {"yes": 1, "no": 0}.get(word)


@dataclass(frozen=True)
class Answer:
    """One parsed Yes/No answer.

    Attributes:
        text: the raw text the LLM returned.
        prediction: 1 (Yes), 0 (No) or None (malformed).
        p_yes: ``P(yes) / (P(yes) + P(no))`` from the first token's top log-probabilities, or None
            when the server gave none (or none of the top tokens was yes/no).
    """

    text: str
    prediction: int | None
    p_yes: float | None


def yes_probability(top_logprobs: Sequence[dict[str, Any]]) -> float | None:
    """``P(yes) / (P(yes) + P(no))`` from a list of ``{"token": str, "logprob": float}``.

    ``P(yes)`` sums ``exp(logprob)`` over the top tokens that normalize to yes (``"Yes"``,
    ``" yes"``, ``"YES"`` …, see :func:`normalize_answer`), likewise ``P(no)``. A top list with
    yes-tokens but no no-tokens gives 1.0 (and vice versa); with neither it gives None.
    """
    p = {0: 0.0, 1: 0.0}
    for entry in top_logprobs:
        label = normalize_answer(str(entry.get("token", "")))
        logprob = entry.get("logprob")
        if label is not None and logprob is not None:
            p[label] += math.exp(float(logprob))
    total = p[0] + p[1]
    return p[1] / total if total > 0 else None


def parse_response(response: dict[str, Any]) -> Answer:
    """Turn a response of :meth:`minitf.explain.llm.LLM.complete` (``text``, ``logprobs``) into an Answer.

    ``logprobs`` is the list of per-token entries ``{"token", "logprob", "top_logprobs"}``; the
    first entry's ``top_logprobs`` (or, lacking those, the token itself) gives ``p_yes``.
    """
    text = response.get("text") or ""
    p_yes = None
    logprobs = response.get("logprobs") or []
    if logprobs:
        first = logprobs[0]
        top = first.get("top_logprobs") or [first]
        p_yes = yes_probability(top)
    return Answer(text=text, prediction=normalize_answer(text), p_yes=p_yes)


def parse_simulation(text: str) -> int | None:
    """The first number in ``text`` when it is a whole number in 0–10 (``"7"``, ``" 7/10"``, ``"Score: 10."``);
    None (malformed, left out and counted) otherwise (``"7.5"``, ``"11"``, ``"seven"``, ``""``)."""
    m = _NUMBER.search(text or "")
    if m is None or not m.group().lstrip("+-").isdigit():
        return None
    value = int(m.group())
    return value if SIMULATION_SCALE[0] <= value <= SIMULATION_SCALE[1] else None
