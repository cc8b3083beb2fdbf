"""minitf.explain.driver: prompts (golden files), answer parsing and the scoring arithmetic.

Golden files: ``tests/golden/explain_prompt.txt`` and ``tests/golden/score_prompt.txt`` hold the
exact messages for the fixed ``EXAMPLES`` below, rendered by ``render_messages``. After an
intended prompt change, bump ``PROMPT_FORMAT_VERSION`` and regenerate them with

    MINITF_UPDATE_GOLDEN=1 python -m pytest tests/test_explain.py

then review the diff (``git diff tests/golden``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from minitf.errors import MinitfError
from minitf.explain.driver import (
    EXPLAIN_PARAMS,
    SCORE_PARAMS,
    Answer,
    HeadExamples,
    balanced_accuracy,
    confusion,
    evaluate_head,
    explain_messages,
    format_example,
    normalize_answer,
    parse_response,
    render_summary,
    roc_auc,
    score_head,
    score_messages,
    summarize,
    summarize_scores,
    yes_probability,
)

GOLDEN = Path(__file__).parent / "golden"

EXAMPLES = HeadExamples(
    neuron="L4N100",
    head="L2H3",
    token=" Israel",
    active=[
        "The Prime Minister of",
        "Tensions rose along the border between Lebanon and",
        'He wrote:\n"""The embassy in Tel Aviv, in',
    ],
    inactive=[
        "She has never travelled to",
        "Line one\r\nline two about",
    ],
)
EXPLANATION = "The head is active when the document is about politics or conflict in the Middle East."


def render_messages(messages: list[dict[str, str]]) -> str:
    return "".join(f"=== {m['role']} ===\n{m['content']}\n" for m in messages)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MINITF_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with MINITF_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------- prompts


def test_explain_prompt_golden() -> None:
    check_golden("explain_prompt.txt", render_messages(explain_messages(EXAMPLES)))


def test_score_prompt_golden() -> None:
    check_golden("score_prompt.txt", render_messages(score_messages(EXPLANATION, " Israel", EXAMPLES.active[2])))


def test_explain_prompt_structure() -> None:
    system, user = explain_messages(EXAMPLES)
    assert system["role"] == "system" and user["role"] == "user"
    content = user["content"]
    assert content.count('"""') == 4  # two blocks; the prompt's own """ was neutralised
    active_block = content.split('"""')[1]
    inactive_block = content.split('"""')[3]
    assert active_block.strip().splitlines() == [f"* {format_example(p, ' Israel')}" for p in EXAMPLES.active]
    assert inactive_block.strip().splitlines() == [f"* {format_example(p, ' Israel')}" for p in EXAMPLES.inactive]
    assert content.index("active:") < content.index("inactive:")
    assert "two to three sentences" in content


def test_explain_max_examples() -> None:
    _, user = explain_messages(EXAMPLES, max_examples=1)
    assert user["content"].count("\n* ") == 2
    with pytest.raises(MinitfError, match="max_examples"):
        explain_messages(EXAMPLES, max_examples=0)


def test_explain_needs_both_classes() -> None:
    with pytest.raises(MinitfError, match=r"^L4N100 L2H3: need both active and inactive"):
        explain_messages(HeadExamples("L4N100", "L2H3", " Israel", ["a"], []))


def test_format_example() -> None:
    assert format_example("a\nb", " X") == "a⏎b X"
    assert format_example("a\r\nb\rc", "!") == "a⏎b⏎c!"
    assert format_example('say """hi', " X") == "say '''hi X"
    assert format_example(" lead", "\n") == " lead⏎"


def test_request_params() -> None:
    assert SCORE_PARAMS == {"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    assert EXPLAIN_PARAMS["temperature"] == 0


def test_score_prompt_question() -> None:
    _, user = score_messages(EXPLANATION, " Israel", "Flights to")
    assert user["content"].endswith("Is the head active on this example? Answer Yes or No.")
    assert "* Flights to Israel\n" in user["content"]


# ------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    "text, expected",
    [("Yes", 1), (" yes", 1), ("YES.", 1), ("Yes, because", 1), ("No", 0), ("no\n", 0), ('"No"', 0),
     ("Maybe", None), ("", None), ("  ", None), ("Y", None), ("Yesterday", None), ("Not", None)],
)
def test_normalize_answer(text: str, expected: int | None) -> None:
    assert normalize_answer(text) == expected


def test_yes_probability() -> None:
    top = [{"token": "Yes", "logprob": math.log(0.6)}, {"token": " yes", "logprob": math.log(0.1)},
           {"token": "No", "logprob": math.log(0.2)}, {"token": "Maybe", "logprob": math.log(0.1)}]
    assert yes_probability(top) == pytest.approx(0.7 / 0.9)
    assert yes_probability([{"token": "Yes", "logprob": -0.5}]) == 1.0
    assert yes_probability([{"token": "no", "logprob": -0.5}]) == 0.0
    assert yes_probability([{"token": "Maybe", "logprob": -0.1}]) is None
    assert yes_probability([]) is None


def test_parse_response() -> None:
    response = {"text": "No", "logprobs": [{"token": "No", "logprob": math.log(0.75),
                                            "top_logprobs": [{"token": "No", "logprob": math.log(0.75)},
                                                             {"token": "Yes", "logprob": math.log(0.25)}]}]}
    answer = parse_response(response)
    assert answer.prediction == 0 and answer.p_yes == pytest.approx(0.25)
    assert parse_response({"text": "Maybe", "logprobs": None}) == Answer("Maybe", None, None)
    assert parse_response({"text": None}).prediction is None


# ------------------------------------------------------------------------------------- arithmetic


def test_balanced_accuracy_by_hand() -> None:
    # TPR = 1/2, TNR = 2/2 → 0.75
    assert balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == 0.75
    assert balanced_accuracy([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0
    assert balanced_accuracy([1, 1, 0, 0], [0, 0, 1, 1]) == 0.0
    # always Yes is chance level, whatever the class balance
    assert balanced_accuracy([1, 0, 0, 0, 0], [1, 1, 1, 1, 1]) == 0.5
    # TPR = 2/3, TNR = 1/4 → 11/24
    assert balanced_accuracy([1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1, 0]) == pytest.approx(11 / 24)


def test_balanced_accuracy_skips_malformed() -> None:
    # the malformed (None) item is left out, not taken as No: TPR = 1/1, TNR = 1/2
    assert balanced_accuracy([1, 1, 0, 0], [1, None, 0, 1]) == 0.75
    assert confusion([1, 1, 0, 0], [1, None, 0, 1]) == confusion([1, 0, 0], [1, 0, 1])
    assert balanced_accuracy([1, 1, 0], [None, None, 0]) is None  # no answered positive
    assert balanced_accuracy([1, 1], [1, 0]) is None


def test_roc_auc_by_hand() -> None:
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    # pairs (pos, neg): (0.9,0.5)=1 (0.9,0.1)=1 (0.5,0.5)=½ (0.5,0.1)=1 → 3.5/4
    assert roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == 0.875
    # all tied → ½
    assert roc_auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5
    # pos {0.8, 0.4, 0.4}, neg {0.4, 0.2}: (0.8:1+1) (0.4:½+1) (0.4:½+1) → 5/6
    assert roc_auc([1, 1, 1, 0, 0], [0.8, 0.4, 0.4, 0.4, 0.2]) == pytest.approx(5 / 6)
    # unscored items are left out; one class missing → None
    assert roc_auc([1, 0, 0], [0.9, None, 0.1]) == 1.0
    assert roc_auc([1, 0], [0.9, None]) is None
    assert roc_auc([1, 1], [0.9, 0.1]) is None


def test_auc_of_binary_scores_is_balanced_accuracy() -> None:
    """For 0/1 scores, P(pos > neg) + ½P(=) = TPR·TNR + ½(TPR(1−TNR) + (1−TPR)TNR) = (TPR+TNR)/2."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        labels = [1, 0] + rng.integers(0, 2, n).tolist()
        predictions = rng.integers(0, 2, len(labels)).tolist()
        assert roc_auc(labels, predictions) == pytest.approx(balanced_accuracy(labels, predictions))


def answers(predictions: Sequence[int | None], p_yes: Sequence[float | None] | None = None) -> list[Answer]:
    p_yes = p_yes or [None] * len(predictions)
    text = {1: "Yes", 0: "No", None: "Maybe"}
    return [Answer(text[p], p, q) for p, q in zip(predictions, p_yes)]


def test_score_head() -> None:
    result = score_head([1, 1, 1, 0, 0], answers([1, None, 0, 0, 1], [0.9, 0.6, 0.2, 0.1, 0.7]),
                        neuron="L4N100", head="L2H3", token=" Israel", explanation="E")
    assert (result.tp, result.fp, result.tn, result.fn) == (1, 1, 1, 1)
    assert result.n_malformed == 1 and result.n_test == 5
    assert result.balanced_accuracy == 0.5
    # AUC uses P(yes) of every scored item, the malformed one included:
    # pos {0.9, 0.6, 0.2} vs neg {0.1, 0.7}: 0.9:2, 0.6:1, 0.2:1 → 4/6
    assert result.roc_auc == pytest.approx(4 / 6)
    assert not result.skipped and result.skip_reason is None
    d = result.to_dict(items=True)
    assert d["balanced_accuracy"] == 0.5 and d["items"][1] == {"label": 1, "answer": "Maybe", "prediction": None, "p_yes": 0.6}


def test_score_head_without_logprobs() -> None:
    result = score_head([1, 0], answers([1, 0]))
    assert result.balanced_accuracy == 1.0 and result.roc_auc is None


def test_score_head_skips_one_label() -> None:
    result = score_head([1, 1, 1], answers([1, 0, 1]))
    assert result.skipped and "all 3 test prompts have label 1" in result.skip_reason
    assert result.balanced_accuracy is None and result.tp == 2


def test_score_head_skips_when_malformed_leave_one_label() -> None:
    result = score_head([1, 1, 0], answers([None, None, 0]))
    assert result.skipped and result.n_malformed == 2 and "malformed" in result.skip_reason


# ------------------------------------------------------------------------------------- driver


class FakeLLM:
    """Stands in for minitf.explain.llm.LLM: records requests, answers from a function."""

    def __init__(self, explanation: str = EXPLANATION) -> None:
        self.explanation = explanation
        self.requests: list[dict[str, Any]] = []

    def complete(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        self.requests.append({"messages": messages, **params})
        if params.get("max_tokens", 0) > 1:
            return {"text": f"  {self.explanation}\n", "logprobs": None}
        example = messages[-1]["content"].split("* ", 1)[1]
        return {"text": "Yes" if "border" in example or "Minister" in example else "No", "logprobs": None}

    def complete_many(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.complete(r["messages"], **{k: v for k, v in r.items() if k != "messages"}) for r in requests]


def test_evaluate_head() -> None:
    llm = FakeLLM()
    train = HeadExamples("L4N100", "L2H3", " Israel", ["The war with"], ["I visited"])
    result = evaluate_head(llm, train, EXAMPLES)
    assert result.explanation == EXPLANATION  # stripped
    assert len(llm.requests) == 1 + 5
    assert llm.requests[0]["messages"] == explain_messages(train)
    assert llm.requests[1]["messages"] == score_messages(EXPLANATION, " Israel", EXAMPLES.active[0])
    assert all(r["max_tokens"] == 1 and r["logprobs"] is True for r in llm.requests[1:])
    assert result.labels == [1, 1, 1, 0, 0]
    assert result.to_dict(items=True)["items"][3]["prompt"] == EXAMPLES.inactive[0]
    assert (result.tp, result.fn, result.tn, result.fp) == (2, 1, 2, 0)
    assert result.balanced_accuracy == pytest.approx((2 / 3 + 1) / 2)


def test_evaluate_head_skips_without_calls() -> None:
    llm = FakeLLM()
    one_label = HeadExamples("L4N100", "L2H3", " Israel", ["a", "b"], [])
    result = evaluate_head(llm, EXAMPLES, one_label)
    assert result.skipped and "all 2 test prompts are active" in result.skip_reason
    no_inactive_train = HeadExamples("L4N100", "L2H3", " Israel", ["a"], [])
    assert evaluate_head(llm, no_inactive_train, EXAMPLES).skipped
    assert llm.requests == []


def test_evaluate_head_empty_explanation() -> None:
    llm = FakeLLM(explanation="")
    result = evaluate_head(llm, EXAMPLES, EXAMPLES)
    assert result.skipped and "empty explanation" in result.skip_reason and len(llm.requests) == 1


# ------------------------------------------------------------------------------------- summary


def test_summarize() -> None:
    s = summarize([0.5, 0.75, 1.0, 0.95, 0.0], n_bins=4)
    assert s.count == 5 and s.mean == pytest.approx(0.64)
    # sample std: deviations -0.14, 0.11, 0.36, 0.31, -0.64; Σd² = 0.0196+0.0121+0.1296+0.0961+0.4096 = 0.667; / (5 − 1)
    assert s.std == pytest.approx(math.sqrt(0.667 / 4))
    assert [c for _, _, c in s.bins] == [1, 0, 1, 3]  # 1.0 falls in the last, closed bin
    assert s.bins[0][:2] == (0.0, 0.25) and s.bins[-1][:2] == (0.75, 1.0)
    assert summarize([0.7]).std is None
    empty = summarize([])
    assert empty.count == 0 and empty.mean is None and sum(c for _, _, c in empty.bins) == 0
    with pytest.raises(ValueError):
        summarize([1.5])


def test_summarize_scores_and_render() -> None:
    scores = [score_head([1, 0], answers([1, 0])), score_head([1, 0], answers([1, 1])),
              score_head([1, 1], answers([1, 1]))]  # the last is skipped
    s = summarize_scores(scores)
    assert s.count == 2 and s.n_skipped == 1 and s.mean == 0.75
    lines = render_summary(s, width=10)
    assert lines[0] == "balanced accuracy: mean 0.750 ± 0.354 (std, N-1), n=2, 1 skipped"
    assert len(lines) == 11
    assert lines[6] == "  [0.5, 0.6) | ##########   1"
    assert lines[10] == "  [0.9, 1.0] | ##########   1"
    assert lines[1] == "  [0.0, 0.1) |              0"
    assert render_summary(summarize([]))[0] == "balanced accuracy: no values, n=0"
    assert summarize_scores(scores, "roc_auc").count == 0
    with pytest.raises(MinitfError, match="metric"):
        summarize_scores(scores, "accuracy")
    # score --json's summary counts what the text summary counts
    d = s.to_dict()
    assert (d["count"], d["mean"], d["std"], d["n_skipped"]) == (2, 0.75, s.std, 1)
    assert [(b["low"], b["high"], b["count"]) for b in d["histogram"]] == s.bins


def test_score_refuses_an_explanation_made_under_another_rule(tmp_path):
    from pathlib import Path

    from minitf import Model, Neuron
    from minitf.explain.driver import ResultStore, score_neuron
    from minitf.explain.prompts import PROMPT_FORMAT_VERSION

    model = Model.load(Path(__file__).resolve().parent / "golden" / "prefixed_f16")
    store = ResultStore(tmp_path, model.folder, "L2N7")
    store.update("L1H1", explanation="when the text is old", rule="top3", prompt_format=PROMPT_FORMAT_VERSION)
    with pytest.raises(MinitfError, match="made with .*'top3'.* this score uses .*'sigma2'"):
        score_neuron(model, Neuron(2, 7), llm=None, store=store, rule="sigma2")


def test_score_refuses_an_explanation_made_from_other_head_scores(tmp_path):
    from pathlib import Path

    from minitf import Model, Neuron
    from minitf.explain.driver import ResultStore, score_neuron
    from minitf.explain.prompts import PROMPT_FORMAT_VERSION

    model = Model.load(Path(__file__).resolve().parent / "golden" / "prefixed_f16")
    store = ResultStore(tmp_path, model.folder, "L2N7")
    store.update("L1H1", explanation="when the text is old", rule="sigma2", scores="paper",
                 prompt_format=PROMPT_FORMAT_VERSION)
    with pytest.raises(MinitfError, match="made with .*'paper'.* this score uses .*'exact'.*--scores"):
        score_neuron(model, Neuron(2, 7), llm=None, store=store, rule="sigma2", scores="exact")
    # an explanation stored before --scores existed was made from whole effects: "exact"
    old = ResultStore(tmp_path / "old", model.folder, "L2N7")
    old.update("L1H1", explanation="when the text is old", rule="sigma2", prompt_format=PROMPT_FORMAT_VERSION)
    with pytest.raises(MinitfError, match="made with .*'exact'.* this score uses .*'paper'"):
        score_neuron(model, Neuron(2, 7), llm=None, store=old, rule="sigma2")
