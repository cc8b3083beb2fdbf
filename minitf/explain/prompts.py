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

EXPLANATION_AND_EXAMPLE = """\
An attention head in a language model helps the model predict that the next token is "{token}". \
Here is an explanation of when the head is active:

{explanation}

Here is an example document, which ends with the token "{token}". Line breaks inside the \
document are shown as {newline}.
\"\"\"
* {example}
\"\"\"
"""
"""What the scoring and the simulation questions both start with: the explanation, then one example."""

SCORE_TEMPLATE = EXPLANATION_AND_EXAMPLE + "\nIs the head active on this example? Answer Yes or No."


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


# --------------------------------------------------------------------------- the paper's protocols (minitf.protocol)
# The authors' prompts, byte for byte (src/datahandlers.py of commit 7c4627c = neo2024, and
# neuron_groups/src/datahandlers.py of commit b98f23e = neo2023). Examples are ``prompt + token`` with nothing
# escaped: the protocol's newline replacement already happened when the prompt was decoded. Each request is one
# user message, no system message, no temperature: {"model": M, "messages": [user], "max_tokens": 200 | 1}.
AUTHORS_CONTEXT = ("We are studying attention heads in a transformer architecture neural network. "
                   "Each attention head looks for some particular thing in a short document.\n")
AUTHORS_INSTRUCTION = ("Look at the documents and explain what makes the attention head active, "
                       "taking into consideration the inactive examples.\n")
AUTHORS_QUESTION = "Is the given example an active example? (Yes/No)\n"
AUTHORS_EXPLANATION_TAIL = {
    "neo2024": "In two to three sentences, suggest when the attention head is active.",
    "neo2023": "Explanation: This attention head is active when the document",  # a sentence to complete
}
AUTHORS_CLASSIFY_PREAMBLE_NEO2023 = "The example is active when the example "


def _authors_examples(label: str, examples: Sequence[str]) -> str:
    """``_prepare_example_list_to_str``: '*' then the example (no space added), fenced by three double quotes;
    an empty list gives a lone '*' line."""
    return label + ' """\n*' + "\n*".join(examples) + '\n"""\n'


def authors_explanation_prompt(version: str, token: str, active: Sequence[str], inactive: Sequence[str]) -> str:
    """``ExplanationPromptGen(token, active + token, inactive + token).get_prompt(shots=0)``:

        context + head sentence + instruction + active examples + inactive examples + tail

    ``active`` / ``inactive``: the trimmed prompts (the token is appended here, as generate_explanation_prompt_dict
    does), in prompt order. ``version``: "neo2024" (tail: a request for two to three sentences) or "neo2023"
    (tail: "Explanation: This attention head is active when the document", to be completed)."""
    if version not in AUTHORS_EXPLANATION_TAIL:
        raise ValueError(f"unknown version {version!r}; choose neo2024 or neo2023")
    head = ('This attention head in particular helps to predict that the next token is "' + token
            + '", but it is only active in some documents and not others. ')
    return (AUTHORS_CONTEXT + head + AUTHORS_INSTRUCTION
            + _authors_examples("Examples where the attention head is active:", [p + token for p in active])
            + _authors_examples("Examples where the attention head is inactive:", [p + token for p in inactive])
            + AUTHORS_EXPLANATION_TAIL[version])


def authors_classify_prompt(version: str, prompt: str, token: str, explanation: str) -> str:
    """``ClassifyPromptGen(prompt + token, token, explanation).get_prompt()`` with the explanation's newlines
    replaced by spaces (the raw reply otherwise, not stripped):

        neo2024: explanation + "\\n" + question + "\\n" + 'Example: \"\"\"\\n' + example + '\\n\"\"\"' + "\\nAnswer: "
        neo2023: question + "The example is active when the example " + explanation + "\\n" + 'Example: …' (same)
    """
    example = 'Example: """\n' + prompt + token + '\n"""' + "\nAnswer: "
    explanation = explanation.replace("\n", " ")
    if version == "neo2024":
        return explanation + "\n" + AUTHORS_QUESTION + "\n" + example
    if version == "neo2023":
        return AUTHORS_QUESTION + AUTHORS_CLASSIFY_PREAMBLE_NEO2023 + explanation + "\n" + example
    raise ValueError(f"unknown version {version!r}; choose neo2024 or neo2023")


def authors_messages(prompt: str) -> list[dict[str, str]]:
    """The authors' request messages: the prompt as the one user message, no system message."""
    return [{"role": "user", "content": prompt}]


# ------------------------------------------------------------------- scorers past Yes/No (minitf.explain.scorers)
MARK_OPEN, MARK_CLOSE = "<<", ">>"
"""How source fuzzing marks a token: ``<<token>>`` (a leading space stays outside: `` <<of>>``)."""

FUZZ_PARAMS: dict[str, Any] = SCORE_PARAMS
"""A fuzzing answer is one Yes/No word, asked like the score's (top-5 log-probabilities for ROC-AUC)."""

FUZZ_SYSTEM = (
    "You check explanations of attention heads in a language model. Given an explanation of when a head is "
    "active and a document in which some tokens are marked, you say whether the marked tokens are the ones the "
    "explanation says the head looks at. Answer with a single word: Yes or No."
)

FUZZ_TEMPLATE = """\
An attention head in a language model helps the model predict that the next token is "{token}". \
Here is an explanation of when the head is active:

{explanation}

Here is a document, which ends with the token "{token}". Line breaks are shown as {newline}. Some tokens \
are marked like {open}this{close}.
\"\"\"
* {example}
\"\"\"

Are the marked tokens what the head looks at, according to the explanation? Answer Yes or No."""


def mark_tokens(tokens: Sequence[str], marked: Sequence[int]) -> str:
    """The tokens joined, those at ``marked`` positions wrapped in ``<<…>>`` (leading whitespace kept outside)."""
    chosen = set(marked)
    out = []
    for i, t in enumerate(tokens):
        if i in chosen:
            body = t.lstrip()
            t = t[:len(t) - len(body)] + MARK_OPEN + body + MARK_CLOSE
        out.append(t)
    return "".join(out)


def fuzz_messages(explanation: str, token: str, tokens: Sequence[str], marked: Sequence[int]) -> list[dict[str, str]]:
    """System + user messages asking whether the marking of ``tokens`` at ``marked`` fits the explanation."""
    user = FUZZ_TEMPLATE.format(token=format_text(token), explanation=explanation.strip(), newline=NEWLINE_MARK,
                                open=MARK_OPEN, close=MARK_CLOSE,
                                example=format_example(mark_tokens(tokens, marked), token))
    return [{"role": "system", "content": FUZZ_SYSTEM}, {"role": "user", "content": user}]


SIMULATION_PARAMS: dict[str, Any] = {"max_tokens": 4, "temperature": 0}
"""A simulation answer is one integer 0–10."""

SIMULATION_SYSTEM = (
    "You simulate an attention head in a language model from an explanation of when it is active. "
    "Answer with a single integer from 0 to 10."
)

SIMULATION_TEMPLATE = EXPLANATION_AND_EXAMPLE + """
On a scale from 0 (not at all) to 10 (as strongly as it ever does), how strongly does the head drive the \
prediction of "{token}" on this example? Answer with one integer from 0 to 10."""


def simulation_messages(explanation: str, token: str, prompt: str) -> list[dict[str, str]]:
    """System + user messages asking for a 0–10 prediction of how strongly the head drives the neuron on
    ``prompt``."""
    user = SIMULATION_TEMPLATE.format(token=format_text(token), explanation=explanation.strip(),
                                      newline=NEWLINE_MARK, example=format_example(prompt, token))
    return [{"role": "system", "content": SIMULATION_SYSTEM}, {"role": "user", "content": user}]
