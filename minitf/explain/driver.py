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

from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

from minitf.errors import MinitfError
from minitf.heads import both_classes
from minitf.scores import DEFAULT
from minitf.trace import Trace, TraceOptions
from minitf.explain.answers import Answer, normalize_answer, parse_response, yes_probability  # noqa: F401
from minitf.explain.metrics import (  # noqa: F401
    Confusion, HeadScore, Summary, authors_answer, authors_score, balanced_accuracy, confusion, render_summary, roc_auc,
    score_head, skip_reason_for,
    summarize, summarize_scores,
)
from minitf.explain.prompts import (  # noqa: F401
    DEFAULT_MAX_EXAMPLES, EXPLAIN_PARAMS, EXPLAIN_SYSTEM, EXPLAIN_TEMPLATE, NEWLINE_MARK, PROMPT_FORMAT_VERSION,
    SCORE_PARAMS, SCORE_SYSTEM, SCORE_TEMPLATE, HeadExamples, authors_classify_prompt, authors_explanation_prompt,
    authors_messages, explain_messages, format_example, format_text, score_messages,
)
from minitf.explain.store import ResultStore  # noqa: F401
from minitf.explain.llm import LLM, DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_LLM, DEFAULT_TIMEOUT


class CompletionClient(Protocol):
    """What :func:`explain_head` / :func:`evaluate_head` need (see :class:`minitf.explain.llm.LLM`)."""

    def complete(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]: ...

    def complete_many(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]: ...


# ---- the protocol's requests and scoring (minitf.protocol: explain_prompt, classify_prompt, system_message,
# temperature, *_max_tokens, logprobs, n_test, answers, scoring) ----------------------------------------------
def get_protocol(protocol=None):
    """``minitf.protocol.get_protocol`` (a name, a Protocol or None: neo2024, the commands' default)."""
    from minitf.protocol import get_protocol as get

    return get(protocol)


def _protocol(protocol):
    """The library functions' protocol: None keeps minitf's own requests and scoring (as before protocols
    existed); the commands pass theirs (default neo2024)."""
    return get_protocol("minitf" if protocol is None else protocol)


def prompt_format(protocol=None) -> str:
    """The prompt-format record of explanations made under ``protocol``: ``PROMPT_FORMAT_VERSION`` for minitf's
    own (as before protocols existed), ``"<version>+<protocol>"`` for the authors' prompts, so results of
    different protocols never mix."""
    p = _protocol(protocol)
    return PROMPT_FORMAT_VERSION if p.explain_prompt == "minitf" else f"{PROMPT_FORMAT_VERSION}+{p.name}"


def _params(p, max_tokens: int) -> dict[str, Any]:
    """A request's parameters under protocol ``p``: max_tokens; temperature unless unset; top-5 logprobs if asked."""
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if p.temperature is not None:
        params["temperature"] = p.temperature
    if p.logprobs:
        params |= {"logprobs": True, "top_logprobs": 5}
    return params


def explain_request(train: HeadExamples, protocol=None, max_examples: int = DEFAULT_MAX_EXAMPLES) -> dict[str, Any]:
    """{"messages", **params} asking when the head is active: minitf's system + user messages (``explain_messages``,
    ``EXPLAIN_PARAMS``), or the authors' one user message (``authors_explanation_prompt``: every train prompt,
    max_tokens 200, no temperature)."""
    p = _protocol(protocol)
    if p.explain_prompt == "minitf":
        return {"messages": explain_messages(train, max_examples), **_params(p, p.explain_max_tokens)}
    text = authors_explanation_prompt(p.explain_prompt, train.token, train.active, train.inactive)
    return {"messages": authors_messages(text), **_params(p, p.explain_max_tokens)}


def classify_request(explanation: str, token: str, prompt: str, protocol=None) -> dict[str, Any]:
    """{"messages", **params} asking Yes/No for one test prompt (``score_messages`` / ``authors_classify_prompt``)."""
    p = _protocol(protocol)
    if p.classify_prompt == "minitf":
        return {"messages": score_messages(explanation, token, prompt), **_params(p, p.classify_max_tokens)}
    text = authors_classify_prompt(p.classify_prompt, prompt, token, explanation)
    return {"messages": authors_messages(text), **_params(p, p.classify_max_tokens)}


def explain_head(llm: CompletionClient, train: HeadExamples, max_examples: int = DEFAULT_MAX_EXAMPLES,
                 protocol=None) -> str:
    """Ask the LLM when the head is active; the explanation text (may be empty): stripped under minitf's prompt,
    the raw reply under the authors' (their classification prompt takes it as returned)."""
    p = _protocol(protocol)
    text = llm.complete(**explain_request(train, p, max_examples)).get("text") or ""
    return text.strip() if p.explain_prompt == "minitf" or not text.strip() else text


def yes_no_answers(llm: CompletionClient, requests: list[dict[str, Any]], protocol=None) -> list[Answer]:
    """The LLM's answers to Yes/No ``requests``, parsed as the protocol parses them: minitf's ``parse_response``,
    or the authors' (only an exact "Yes"/"No" counts, ``authors_answer``)."""
    answers = [parse_response(r) for r in llm.complete_many(requests)]
    if _protocol(protocol).answers == "exact":
        answers = [replace(a, prediction=authors_answer(a.text)) for a in answers]
    return answers


def score_explanation(llm: CompletionClient, explanation: str, test: HeadExamples, protocol=None) -> HeadScore:
    """Ask the LLM Yes/No for every test prompt (active ones first) and score the answers: minitf's
    ``score_head``, or the authors' (answers exactly "Yes"/"No", ``authors_score`` by the protocol's scoring)."""
    p = _protocol(protocol)
    prompts = list(test.active) + list(test.inactive)
    labels = [1] * len(test.active) + [0] * len(test.inactive)
    answers = yes_no_answers(llm, [classify_request(explanation, test.token, q, p) for q in prompts], p)
    result = score_head(
        labels, answers, neuron=test.neuron, head=test.head, token=test.token, explanation=explanation
    )
    if p.scoring != "minitf":
        c = confusion(labels, [a.prediction for a in answers])
        result.balanced_accuracy = authors_score(c, p.scoring)
        result.skipped = result.balanced_accuracy is None
        result.skip_reason = (f"{p.scoring}: TPR or TNR undefined (tp+fn = {c.tp + c.fn}, tn+fp = {c.tn + c.fp})"
                              if result.skipped else None)
    result.prompts = prompts
    return result


def evaluate_head(
    llm: CompletionClient,
    train: HeadExamples,
    test: HeadExamples,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    protocol=None,
) -> HeadScore:
    """Explain the head from ``train``, then score the explanation on ``test`` (under ``protocol``).

    Skips (without calling the LLM) when the test prompts are all one label (none, under the rate fallback,
    which scores one class by its rate) or the train prompts lack a class, and after explaining when the
    explanation is empty.
    """
    p = _protocol(protocol)
    skipped = HeadScore(neuron=train.neuron, head=train.head, token=train.token, skipped=True)
    reason = _test_skip(p, test) or both_classes(len(train.active), len(train.inactive), "train prompt")
    if reason is not None:
        skipped.skip_reason = reason
        skipped.n_test = len(test.active) + len(test.inactive)
        return skipped
    explanation = explain_head(llm, train, max_examples, p)
    if not explanation.strip():
        skipped.explanation = explanation
        skipped.skip_reason = "the LLM returned an empty explanation"
        return skipped
    return score_explanation(llm, explanation, test, p)


def head_examples(trace: Trace, head: str, limit: int | None = None) -> HeadExamples:
    """The active / inactive prompts (decoded text) of ``head`` in a trace (see ``minitf.trace``), among its first
    ``limit`` prompts (None: all; the protocol's n_test for test prompts)."""
    if trace.head(head) is None:
        raise MinitfError(f"`head` {head}: not a candidate head of {trace.neuron.name} "
                          "(heads of earlier layers; `include_same_layer` adds its own layer)", param="head")
    prompts = trace.prompts[:limit]
    active = [p.text for p in prompts if head in p.active_heads]
    inactive = [p.text for p in prompts if head not in p.active_heads]
    return HeadExamples(trace.neuron.name, head, trace.neuron.token.text, active, inactive)


def llm_client(model_name: str = DEFAULT_LLM, base_url: str | None = None, cache_dir=None,
               max_calls: int | None = None, concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT,
               max_retries: int = DEFAULT_MAX_RETRIES) -> LLM:
    """The LLM of the explain, score and study commands, its responses cached under ``<minitf cache>/llm``."""
    from minitf.util.files import cache_path

    return LLM(model_name, base_url, cache_dir=cache_path("llm", cache_dir), max_calls=max_calls,
               concurrency=concurrency, timeout=timeout, max_retries=max_retries)


def llm_setup(model_spec, neuron, cache_dir, llm_model, base_url, max_calls, concurrency, timeout, max_retries,
              dry_run=False):
    """(model, LLM or None for a dry run, ResultStore) of the explain and score commands."""
    import minitf
    from minitf.names import check_neuron

    model = minitf.load(model_spec)
    check_neuron(neuron, model.cfg.n_layer, model.cfg.d_mlp, where=f"--neuron {neuron}")
    llm = None if dry_run else llm_client(llm_model, base_url, cache_dir, max_calls, concurrency, timeout, max_retries)
    return model, llm, ResultStore(cache_dir, model.folder, str(neuron))


def _traced_heads(model, neuron, split: str, head: str | None, trace_options: dict[str, Any]):
    """Trace ``neuron`` on a split's top prompts; the heads to explain (``head``, or the differential ones).
    The test split with a ``test_corpus`` is that corpus's top prompts (all of its documents), as in the paper."""
    from minitf.names import parse_head
    from minitf.trace import PromptSource, trace_neuron

    options = dict(trace_options)  # corpus, test_corpus and n_prompts choose the prompts, the rest are TraceOptions
    corpus, test_corpus = options.pop("corpus", None), options.pop("test_corpus", None)
    if split == "test" and test_corpus:
        corpus, split = test_corpus, "all"
    source = PromptSource(corpus=corpus, split=split, n_prompts=options.pop("n_prompts", 20))
    result = trace_neuron(model, neuron, source, TraceOptions(ablate=0, **options))
    if head:
        return result, [str(parse_head(head, model.cfg.n_layer, model.cfg.n_head))]
    return result, result.differential_heads


def test_prompts_line(protocol, test_corpus) -> str:
    """The one line saying where the test prompts come from."""
    if test_corpus:
        return f"test prompts: the top prompts of the test corpus {test_corpus} (as in the paper)"
    extra = (" (the paper mines them from a separate corpus: give --test-corpus)"
             if _protocol(protocol).test_prompts == "test-corpus" else "")
    return f"test prompts: the corpus's test split (sha256 hash split of its documents){extra}"


def _test_skip(p, test: HeadExamples) -> str | None:
    """Why ``test`` cannot be scored under protocol ``p`` (the rate fallback scores a one-class pair)."""
    if p.scoring == "rate-fallback":
        return None if test.active or test.inactive else "no test prompt"
    return skip_reason_for(test)


def explain_neuron(model, neuron, llm: CompletionClient | None, store: ResultStore, head: str | None = None,
                   **trace_options: Any) -> dict[str, Any]:
    """Explain each differential head of ``neuron`` (or ``head``) from its top train-split prompts, with the
    requests of ``trace_options["protocol"]`` (default neo2024; see ``explain_request``).

    With ``llm=None`` (a dry run) nothing is called and each head's exact messages are returned instead.
    Returns {"token", "n_prompts", "protocol", "heads": {head: {"n_active", "n_inactive", "explanation" |
    "messages" | "skip_reason"}}}; explanations are saved in ``store``.
    """
    p = _protocol(trace_options.get("protocol"))
    result, heads = _traced_heads(model, neuron, "train", head, trace_options | {"protocol": p.name})
    out: dict[str, Any] = {"token": result.neuron.token.text, "n_prompts": len(result.prompts), "protocol": p.name,
                           "heads": {}}
    for name in heads:
        examples = head_examples(result, name)
        entry: dict[str, Any] = {"n_active": len(examples.active), "n_inactive": len(examples.inactive)}
        out["heads"][name] = entry
        if reason := both_classes(len(examples.active), len(examples.inactive), "train prompt"):
            entry["skip_reason"] = reason
        elif llm is None:
            entry["messages"] = explain_request(examples, p)["messages"]
        else:
            entry["explanation"] = explain_head(llm, examples, protocol=p)
            store.update(name, explanation=entry["explanation"], n_active=entry["n_active"],
                         n_inactive=entry["n_inactive"], rule=result.settings.rule, scores=result.settings.scores,
                         prompt_format=prompt_format(p), protocol=p.name)
    return out


@dataclass
class ScoreInputs:
    """What the score command scores, before any request: the protocol, every stored explanation of the neuron
    (``explained``, by head: the random-explanation baseline's donors), the heads to score with their test prompts
    (``tests``), the heads skipped with why, and the test prompts' trace."""

    protocol: Any
    explained: dict[str, str]
    tests: dict[str, HeadExamples]
    skipped: dict[str, str]
    test_trace: Trace


def score_neuron(model, neuron, llm: CompletionClient, store: ResultStore, head: str | None = None,
                 **trace_options: Any) -> tuple[list[HeadScore], dict[str, str]]:
    """Score the stored explanations of ``neuron``'s heads on the first n_test (the protocol's) of its top
    test prompts (the test split, or ``test_corpus``), labelled by the same rule and head scores, with the
    protocol's requests and scoring. Returns (scores, {head: skip reason}); scores are saved in ``store``."""
    inputs = score_inputs(model, neuron, store, head, **trace_options)
    return score_tests(llm, store, inputs), inputs.skipped


def score_tests(llm: CompletionClient, store: ResultStore, inputs: ScoreInputs) -> list[HeadScore]:
    """Score each head of ``inputs.tests`` (``score_explanation``), saving its score in ``store``."""
    scores = []
    for name, test in inputs.tests.items():
        s = score_explanation(llm, inputs.explained[name], test, inputs.protocol)
        store.update(name, balanced_accuracy=s.balanced_accuracy, roc_auc=s.roc_auc, n_test=s.n_test,
                     n_malformed=s.n_malformed, protocol=inputs.protocol.name)
        scores.append(s)
    return scores


def score_inputs(model, neuron, store: ResultStore, head: str | None = None, **trace_options: Any) -> ScoreInputs:
    """``score_neuron``'s inputs: the stored explanations (refused when made under other settings, or missing)
    and the test prompts of each head to score; no request is made."""
    p = _protocol(trace_options.get("protocol"))
    trace_options = trace_options | {"protocol": p.name}
    stored = store.load()
    explained = {h: r["explanation"] for h, r in stored.items() if r.get("explanation")}
    for h in explained:
        # explanations stored before --scores existed were made on whole effects: "exact"
        made = {"rule": stored[h].get("rule"), "scores": stored[h].get("scores", "exact"),
                "prompt_format": stored[h].get("prompt_format")}
        rule = TraceOptions(trace_options.get("rule"), protocol=trace_options.get("protocol")).resolved().head_rule
        now = {"rule": rule, "scores": trace_options.get("scores", DEFAULT), "prompt_format": prompt_format(p)}
        if made != now:
            raise MinitfError(f"{store.path}: the explanation of {h} was made with {made}, this score uses {now}: "
                              "rerun 'python cli.py explain' with the same --rule, --scores and --protocol")
    every = dict(sorted(explained.items()))
    if head:
        from minitf.names import parse_head

        wanted = str(parse_head(head, model.cfg.n_layer, model.cfg.n_head))
        explained = {h: e for h, e in explained.items() if h == wanted}
    asked = [wanted] if head else list(stored)
    empty = sorted(h for h, r in stored.items() if "explanation" in r and not r["explanation"] and h in asked)
    if not explained and empty:  # the LLM answered "" (not a missing explain run)
        raise MinitfError(f"{store.path}: the LLM's explanation of {neuron} {', '.join(empty)} was empty: "
                          "rerun 'python cli.py explain' (perhaps with another --llm)")
    if not explained:
        raise MinitfError(f"{store.path}: no explanation for {neuron}{' ' + head if head else ''}: "
                          "run 'python cli.py explain' first")
    result, _ = _traced_heads(model, neuron, "test", None, trace_options)
    tests, skipped = {}, {}
    for name in sorted(explained):
        test = head_examples(result, name, limit=p.n_test)
        if reason := _test_skip(p, test):
            skipped[name] = reason
            continue
        tests[name] = test
    return ScoreInputs(p, every, tests, skipped, result)


# ---- the explain and score commands' text ---------------------------------------------------------------------
def explain_lines(neuron, out: dict[str, Any], rule: str, scores: str) -> list[str]:
    """The explain command's text: per head its counts and explanation, exact messages (dry run) or skip reason."""
    from minitf.util.fmt import count

    lines = []
    if not out["heads"]:
        lines.append(f"{neuron}: no differential head on its top {count(out['n_prompts'], 'train prompt')} "
                     f"(rule {rule}, scores {scores}); name one with --head")
    for head, entry in out["heads"].items():
        counts = f"{entry['n_active']} active / {count(entry['n_inactive'], 'inactive train prompt')}"
        if "messages" in entry:
            lines.append(f"===== {neuron} {head}: {counts} (protocol {out['protocol']})")
            lines += [f"--- {m['role']}\n{m['content']}" for m in entry["messages"]]
        elif "skip_reason" in entry:
            lines.append(f"{head}: skipped ({counts}): {entry['skip_reason']}")
        else:
            lines.append(f"{head} ({counts}):\n  {entry['explanation']}")
    return lines


def score_lines(scores: list[HeadScore], skipped: dict[str, str]) -> list[str]:
    """The score command's text: skipped heads with why, then each head's score and confusion counts."""
    from minitf.util.fmt import count, num

    lines = [f"{head}: skipped: {reason}" for head, reason in skipped.items()]
    for s in scores:
        lines.append(f"{s.head}: balanced accuracy {num(s.balanced_accuracy)}, ROC-AUC {num(s.roc_auc)} (TP {s.tp} "
                     f"FP {s.fp} TN {s.tn} FN {s.fn}; {count(s.n_malformed, 'malformed answer')})")
    return lines
