"""Step 4 of Neo, Cohen & Barez (EMNLP 2024): explain when an attention head is active, and score it.

For a next-token neuron (e.g. one that promotes " Israel") and a *differential* attention head
(active on 25-75 % of the neuron's top prompts), the trace gives an active / inactive split of
prompts. An LLM

* writes an explanation of when the head is active from the *train* examples
  (:func:`explain_messages`), and
* answers Yes/No for each held-out *test* prompt from the explanation alone
  (:func:`score_messages`).

The explanation's score is the balanced accuracy of those answers,
``(TPR + TNR) / 2`` (:func:`balanced_accuracy`); where the server returns log-probabilities we also
report the ROC-AUC of ``P(Yes)`` (:func:`roc_auc`).

The step is split along its seams: the prompts (``minitf.explain.prompts``), the answer parsing
(``minitf.explain.answers``), the arithmetic (``minitf.explain.metrics``) and where the results live
(``minitf.explain.store``); none talks to the network. This module drives them:
:func:`explain_head` and :func:`evaluate_head` drive any object with the ``complete`` /
``complete_many`` methods of :class:`minitf.explain.llm.LLM`, and :func:`explain_neuron` /
:func:`score_neuron` run the ``explain`` and ``score`` commands. Their names are importable from
here too.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from minitf.errors import MinitfError
from minitf.heads import both_classes
from minitf.scores import DEFAULT
from minitf.trace import Trace, TraceOptions
from minitf.explain.answers import Answer, normalize_answer, parse_response, yes_probability  # noqa: F401
from minitf.explain.metrics import (  # noqa: F401
    Confusion, HeadScore, Summary, balanced_accuracy, confusion, render_summary, roc_auc, score_head, skip_reason_for,
    summarize, summarize_scores,
)
from minitf.explain.prompts import (  # noqa: F401
    DEFAULT_MAX_EXAMPLES, EXPLAIN_PARAMS, EXPLAIN_SYSTEM, EXPLAIN_TEMPLATE, NEWLINE_MARK, PROMPT_FORMAT_VERSION,
    SCORE_PARAMS, SCORE_SYSTEM, SCORE_TEMPLATE, HeadExamples, explain_messages, format_example, format_text,
    score_messages,
)
from minitf.explain.store import ResultStore  # noqa: F401
from minitf.explain.llm import LLM, DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_LLM, DEFAULT_TIMEOUT


class CompletionClient(Protocol):
    """What :func:`explain_head` / :func:`evaluate_head` need (see :class:`minitf.explain.llm.LLM`)."""

    def complete(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]: ...

    def complete_many(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]: ...


def explain_head(llm: CompletionClient, train: HeadExamples, max_examples: int = DEFAULT_MAX_EXAMPLES) -> str:
    """Ask the LLM when the head is active; the explanation text, stripped (may be empty)."""
    response = llm.complete(explain_messages(train, max_examples), **EXPLAIN_PARAMS)
    return (response.get("text") or "").strip()


def score_explanation(llm: CompletionClient, explanation: str, test: HeadExamples) -> HeadScore:
    """Ask the LLM Yes/No for every test prompt (active ones first) and score the answers."""
    prompts = list(test.active) + list(test.inactive)
    labels = [1] * len(test.active) + [0] * len(test.inactive)
    requests = [{"messages": score_messages(explanation, test.token, p), **SCORE_PARAMS} for p in prompts]
    answers = [parse_response(r) for r in llm.complete_many(requests)]
    result = score_head(
        labels, answers, neuron=test.neuron, head=test.head, token=test.token, explanation=explanation
    )
    result.prompts = prompts
    return result


def evaluate_head(
    llm: CompletionClient,
    train: HeadExamples,
    test: HeadExamples,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> HeadScore:
    """Explain the head from ``train``, then score the explanation on ``test``.

    Skips (without calling the LLM) when the test prompts are all one label or the train prompts
    lack a class, and after explaining when the explanation is empty.
    """
    skipped = HeadScore(neuron=train.neuron, head=train.head, token=train.token, skipped=True)
    reason = skip_reason_for(test) or both_classes(len(train.active), len(train.inactive), "train prompt")
    if reason is not None:
        skipped.skip_reason = reason
        skipped.n_test = len(test.active) + len(test.inactive)
        return skipped
    explanation = explain_head(llm, train, max_examples)
    if not explanation:
        skipped.explanation = explanation
        skipped.skip_reason = "the LLM returned an empty explanation"
        return skipped
    return score_explanation(llm, explanation, test)


def head_examples(trace: Trace, head: str) -> HeadExamples:
    """The active / inactive prompts (decoded text) of ``head`` in a trace (see ``minitf.trace``)."""
    if trace.head(head) is None:
        raise MinitfError(f"`head` {head}: not a candidate head of {trace.neuron.name} "
                          "(heads of earlier layers; `include_same_layer` adds its own layer)", param="head")
    active = [p.text for p in trace.prompts if head in p.active_heads]
    inactive = [p.text for p in trace.prompts if head not in p.active_heads]
    return HeadExamples(trace.neuron.name, head, trace.neuron.token.text, active, inactive)


def llm_client(model_name: str = DEFAULT_LLM, base_url: str | None = None, cache_dir=None,
               max_calls: int | None = None, concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT,
               max_retries: int = DEFAULT_MAX_RETRIES) -> LLM:
    """The LLM of the explain, score and study commands, its responses cached under ``<minitf cache>/llm``."""
    from minitf.util.files import cache_path

    return LLM(model_name, base_url, cache_dir=cache_path("llm", cache_dir), max_calls=max_calls,
               concurrency=concurrency, timeout=timeout, max_retries=max_retries)


def _traced_heads(model, neuron, split: str, head: str | None, trace_options: dict[str, Any]):
    """Trace ``neuron`` on a split's top prompts; the heads to explain (``head``, or the differential ones)."""
    from minitf.names import parse_head
    from minitf.trace import PromptSource, trace_neuron

    options = dict(trace_options)  # corpus and n_prompts choose the prompts, the rest are TraceOptions
    source = PromptSource(corpus=options.pop("corpus", None), split=split, n_prompts=options.pop("n_prompts", 20))
    result = trace_neuron(model, neuron, source, TraceOptions(ablate=0, **options))
    if head:
        return result, [str(parse_head(head, model.cfg.n_layer, model.cfg.n_head))]
    return result, result.differential_heads


def explain_neuron(model, neuron, llm: CompletionClient | None, store: ResultStore, head: str | None = None,
                   **trace_options: Any) -> dict[str, Any]:
    """Explain each differential head of ``neuron`` (or ``head``) from its top train-split prompts.

    With ``llm=None`` (a dry run) nothing is called and each head's exact messages are returned instead.
    Returns {"token", "n_prompts", "heads": {head: {"n_active", "n_inactive", "explanation" | "messages" |
    "skip_reason"}}}; explanations are saved in ``store``.
    """
    result, heads = _traced_heads(model, neuron, "train", head, trace_options)
    out: dict[str, Any] = {"token": result.neuron.token.text, "n_prompts": len(result.prompts), "heads": {}}
    for name in heads:
        examples = head_examples(result, name)
        entry: dict[str, Any] = {"n_active": len(examples.active), "n_inactive": len(examples.inactive)}
        out["heads"][name] = entry
        if reason := both_classes(len(examples.active), len(examples.inactive), "train prompt"):
            entry["skip_reason"] = reason
        elif llm is None:
            entry["messages"] = explain_messages(examples)
        else:
            entry["explanation"] = explain_head(llm, examples)
            store.update(name, explanation=entry["explanation"], n_active=entry["n_active"],
                         n_inactive=entry["n_inactive"], rule=result.settings.rule, scores=result.settings.scores,
                         prompt_format=PROMPT_FORMAT_VERSION)
    return out


def score_neuron(model, neuron, llm: CompletionClient, store: ResultStore, head: str | None = None,
                 **trace_options: Any) -> tuple[list[HeadScore], dict[str, str]]:
    """Score the stored explanations of ``neuron``'s heads on its top test-split prompts, labelled by the same
    rule and head scores. Returns (scores, {head: skip reason}); scores are saved in ``store``."""
    stored = store.load()
    explained = {h: r["explanation"] for h, r in stored.items() if r.get("explanation")}
    for h in explained:
        # explanations stored before --scores existed were made on whole effects: "exact"
        made = {"rule": stored[h].get("rule"), "scores": stored[h].get("scores", "exact"),
                "prompt_format": stored[h].get("prompt_format")}
        now = {"rule": TraceOptions(trace_options.get("rule"), protocol=trace_options.get("protocol")).resolved().head_rule, "scores": trace_options.get("scores", DEFAULT),
               "prompt_format": PROMPT_FORMAT_VERSION}
        if made != now:
            raise MinitfError(f"{store.path}: the explanation of {h} was made with {made}, this score uses {now}: "
                              "rerun 'python cli.py explain' with the same --rule and --scores")
    if head:
        from minitf.names import parse_head

        wanted = str(parse_head(head, model.cfg.n_layer, model.cfg.n_head))
        explained = {h: e for h, e in explained.items() if h == wanted}
    if not explained:
        raise MinitfError(f"{store.path}: no explanation for {neuron}{' ' + head if head else ''}: "
                          "run 'python cli.py explain' first")
    result, _ = _traced_heads(model, neuron, "test", None, trace_options)
    scores, skipped = [], {}
    for name, explanation in sorted(explained.items()):
        test = head_examples(result, name)
        if reason := skip_reason_for(test):
            skipped[name] = reason
            continue
        s = score_explanation(llm, explanation, test)
        store.update(name, balanced_accuracy=s.balanced_accuracy, roc_auc=s.roc_auc, n_test=s.n_test,
                     n_malformed=s.n_malformed)
        scores.append(s)
    return scores, skipped
