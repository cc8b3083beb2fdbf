"""The LLM's prompts for step 4 (see ``minitf.explain.driver``): the examples, the explanation request, the Yes/No question.

How an example is shown to the LLM (:func:`format_example`)
    The neuron's token is appended to the prompt text (``prompt + token``), exactly as the model
    would continue it. Line breaks (``\\r\\n``, ``\\r``, ``\\n``) become the visible mark ``⏎``
    (U+23CE) so that each example stays on its own ``*`` bullet line, and a ``\"\"\"`` inside a
    prompt becomes ``'''`` so that it cannot close the triple-quoted block early. Nothing else is
    changed (leading spaces are kept).

Changing any prompt text or request parameter must bump :data:`PROMPT_FORMAT_VERSION`: it is part
of the LLM cache key, so old cached answers are not reused for a new prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from minitf.errors import MinitfError
from minitf.heads import both_classes

PROMPT_FORMAT_VERSION = "1"
"""Version of the prompt wording and request parameters; part of every LLM cache key."""

NEWLINE_MARK = "\u23ce"  # ⏎
DEFAULT_MAX_EXAMPLES = 20
"""Default number of active and of inactive examples (each) shown in the explanation prompt."""

EXPLAIN_PARAMS: dict[str, Any] = {"max_tokens": 256, "temperature": 0}
"""Request parameters for the explanation (two to three sentences)."""

SCORE_PARAMS: dict[str, Any] = {"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5}
"""Request parameters for one Yes/No answer, with the top-5 log-probabilities of the first token."""


@dataclass(frozen=True)
class HeadExamples:
    """Prompts (decoded text) on which one head is active / inactive for one neuron.

    Attributes:
        neuron: the neuron's name, e.g. ``"L4N100"``.
        head: the head's name, e.g. ``"L2H3"``.
        token: the token the neuron promotes, e.g. ``" Israel"`` (with its leading space).
        active: prompts on which the head is active.
        inactive: prompts on which the head is inactive.
    """

    neuron: str
    head: str
    token: str
    active: list[str]
    inactive: list[str]


def format_text(text: str) -> str:
    """Make ``text`` safe for one bullet line: line breaks → ``⏎``, ``\"\"\"`` → ``'''``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", NEWLINE_MARK)
    return text.replace('"""', "'''")


def format_example(prompt: str, token: str) -> str:
    """One example as the LLM sees it: the prompt with the neuron's token appended, made safe."""
    return format_text(prompt + token)


def _bullets(prompts: Sequence[str], token: str) -> str:
    return "\n".join(f"* {format_example(p, token)}" for p in prompts)


EXPLAIN_SYSTEM = (
    "You are an expert in the interpretability of neural language models. "
    "You explain the behaviour of model components concisely, concretely and accurately."
)

EXPLAIN_TEMPLATE = """\
We are studying attention heads in a transformer language model. The attention head we are \
looking at helps the model predict that the next token is "{token}", but it is active only in \
some documents.

Each example below is a document that ends with the token "{token}". Line breaks inside a \
document are shown as {newline}.

Examples where the head is active:
\"\"\"
{active}
\"\"\"

Examples where the head is inactive:
\"\"\"
{inactive}
\"\"\"

When is the head active? Explain what distinguishes the documents where it is active from those \
where it is inactive. Answer in two to three sentences."""


def explain_messages(ex: HeadExamples, max_examples: int = DEFAULT_MAX_EXAMPLES) -> list[dict[str, str]]:
    """System + user chat messages asking the LLM when the head is active.

    Shows the first ``max_examples`` active and the first ``max_examples`` inactive prompts
    (shuffle beforehand if the order is meaningful).
    """
    if max_examples < 1:
        raise MinitfError(f"max_examples: must be at least 1, got {max_examples}")
    if reason := both_classes(len(ex.active), len(ex.inactive)):
        raise MinitfError(f"{ex.neuron} {ex.head}: {reason}")
    user = EXPLAIN_TEMPLATE.format(
        token=format_text(ex.token),
        newline=NEWLINE_MARK,
        active=_bullets(ex.active[:max_examples], ex.token),
        inactive=_bullets(ex.inactive[:max_examples], ex.token),
    )
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


SCORE_SYSTEM = (
    "You predict whether an attention head in a language model is active on a document, using only "
    "an explanation of when the head is active. Answer with a single word: Yes or No."
)

SCORE_TEMPLATE = """\
An attention head in a language model helps the model predict that the next token is "{token}". \
Here is an explanation of when the head is active:

{explanation}

Here is an example document, which ends with the token "{token}". Line breaks inside the \
document are shown as {newline}.
\"\"\"
* {example}
\"\"\"

Is the head active on this example? Answer Yes or No."""


def score_messages(explanation: str, token: str, prompt: str) -> list[dict[str, str]]:
    """System + user chat messages asking whether the head is active on ``prompt``.

    Send them with :data:`SCORE_PARAMS` (one token, temperature 0, top-5 log-probabilities).
    """
    user = SCORE_TEMPLATE.format(
        token=format_text(token),
        explanation=explanation.strip(),
        newline=NEWLINE_MARK,
        example=format_example(prompt, token),
    )
    return [{"role": "system", "content": SCORE_SYSTEM}, {"role": "user", "content": user}]
