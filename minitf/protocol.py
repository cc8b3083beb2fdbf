"""The three protocols: every choice of data construction, prompting and statistics, in one typed table.

A *protocol* names one value for each choice that the steps of a study make (which neurons, which prompts,
which heads, what the LLM is asked, how it is scored). Three are built in:

    neo2024   the published pipeline of Neo, Cohen & Barez (EMNLP 2024): the authors' v-Feb24 files
              (github fbarez/Interpreting-Context-Look-ups, commit 7c4627c, top-level src/ and notebooks/,
              outputs suffixed _acl / _aclcn). The default.
    neo2023   the October 2023 version (commit b98f23e, neuron_groups/src/ and neuron_groups/notebooks/):
              top-3 heads, its differential band, 30 prompts, 20 test prompts, the question-first
              classification prompt, its rate fallback.
    minitf    minitf's own choices, kept for new research where they are better; each choice below says why.

``PROTOCOLS[name]`` is a frozen ``Protocol``; ``protocol.with_overrides(n_prompts=30)`` changes single choices
and remembers which (``Protocol.overridden``); ``protocol.describe()`` is the record a run writes as
``settings.protocol``: the protocol's name, each choice's value, and the choices a flag overrode.

Where the authors' code crashes or is undefined, the protocols do the sensible thing and the record says so:
a document whose peak is at BOS is dropped (their ``find_truncated_texts`` raises an IndexError on it); a
neuron with fewer prompts than ``n_prompts`` uses the ones it has (as their code silently does).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from minitf.errors import MinitfError
from minitf.util.records import Record

AUTHORS_REPO = "github.com/fbarez/Interpreting-Context-Look-ups"
NEO2024_COMMIT = "7c4627cdf9f370e11d9b335830226125b00aa110"
NEO2023_COMMIT = "b98f23e85f77da6ad207b55418fcba48a5da044f"


@dataclass(frozen=True)
class Choice:
    """What one field of ``Protocol`` means: its allowed values, the authors' code it follows, and why
    minitf's own protocol makes it differently (empty when it does not)."""

    name: str
    values: tuple
    authors: str  # the authors' file / function (neo2024 path; neo2023 under neuron_groups/)
    meaning: str
    why_minitf: str = ""


# Each choice, written once. ``values`` of None means "any value of the field's type".
CHOICES: tuple[Choice, ...] = (
    Choice("neuron_walk", ("skip", "filtered-argmax"),
           "src/neuron_texts.py::find_neurons",
           "skip: congruence and token over all tokens, neurons walked by descending congruence, a neuron whose "
           "token fails the filter (or is on the reject list) skipped; filtered-argmax: congruence and token "
           "maximised over the allowed tokens only",
           "keeps a neuron whose best *word* is a strong next-token prediction even when a byte fragment "
           "outscores it; the fragment is shown beside it"),
    Choice("token_filter", ("authors", "minitf"),
           "src/neuron_texts.py::find_neurons (len(str_token) <= 2 or str_token[0] != ' ' → skip)",
           "authors: keep iff len(s) >= 3 and s[0] == ' ' on the decoded token; minitf: also not whitespace only",
           "'   ' and ' \\n' pass the authors' test literally but are not words"),
    Choice("congruence_weights", ("transformerlens",),
           "notebooks/1_find_neurons.ipynb (HookedTransformer.from_pretrained(fold_ln, center_writing_weights, "
           "center_unembed))",
           "W_out[l, n] · W_U′ with W_U′ = diag(γ_f) W_U centred over d_model, then over the vocabulary; no bias"),
    Choice("trimming", ("authors", "minitf"),
           "src/neuron_texts.py::find_truncated_texts",
           "authors: bisection with start/end/mid, `while start != mid`, strict > 0.8·A, the last tested "
           "activation recorded (a prompt may end below 0.8·A and is kept); minitf: the shortest suffix with "
           "activation ≥ 0.8·A, guaranteed",
           "every kept prompt really keeps ≥ 80 % of the activation (the authors' search records the last "
           "*tested* activation: 1064 of 1800 of their GPT-2-small test prompts end below 0.8·A)"),
    Choice("trim_bos", (True, False),
           "src/neuron_texts.py::find_truncated_texts (model.run_with_hooks(example_tokens[:, mid:]): a tensor, "
           "so no BOS)",
           "whether the trimming runs prepend BOS",
           "the model sees the prompt with BOS in every later step (attribution, LLM test labels), so the "
           "trimming should measure it the same way"),
    Choice("max_prompt_tokens", None,
           "src/datahandlers.py::ActivatingDataset.remove_prompts_longer_than(100)",
           "prompts of this many tokens or more are dropped"),
    Choice("prompt_tokens_counted", ("text", "with-bos"),
           "src/datahandlers.py::remove_prompts_longer_than (token_pos - start_pos < 100)",
           "text: the text tokens of the slice (BOS not counted); with-bos: the traced token list, BOS included",
           "the bound is on what is traced, BOS included"),
    Choice("newlines", ("space", "keep"),
           "src/datahandlers.py::ActivatingDataset.load_truncated_prompts(replace_newlines_with_spaces=True)",
           "space: '\\n' → ' ' in the decoded prompt (only '\\n'); keep: unchanged",
           "the newline is part of what the model read; replacing it changes the tokens and so the activation "
           "and the heads (the LLM sees a ⏎ mark instead)"),
    Choice("attribution_tokens", ("retokenized", "as-mined"),
           "notebooks/4_head_attribution.ipynb (model.to_tokens(prompt strings, prepend_bos=True))",
           "retokenized: the decoded prompt string is tokenised again, with BOS, for attribution; as-mined: the "
           "token list the trimming measured",
           "decode → (replace) → encode can change the tokens; tracing the mined tokens traces what was measured"),
    Choice("n_candidates", None,
           "notebooks/3_truncate_texts.ipynb (find_truncated_texts(num_samples=30))",
           "top documents per neuron, by peak activation, that are trimmed"),
    Choice("n_prompts", None,
           "notebooks/4_head_attribution.ipynb (trunc_prompts[:20]); neo2023: src/neuron_heads.py (no slice)",
           "prompts per neuron kept for attribution (first n of the kept ones, before duplicates collapse)"),
    Choice("duplicates", ("collapse", "refill"),
           "notebooks/4_head_attribution.ipynb (head_results[prompt] = …: a dict keyed by the prompt string)",
           "collapse: identical strings count once, no replacement; refill: further candidates are trimmed until "
           "n distinct prompts are found",
           "a neuron keeps n prompts even when several documents trim to the same text"),
    Choice("head_rule", ("sigma2", "top3"),
           "notebooks/4_head_attribution.ipynb cell 4 (neo2024); src/neuron_heads.py::head_attribution_over_all_data "
           "(neo2023: torch.topk(k=3))",
           "sigma2: e_h > mean + 2·std (N − 1) over the heads of earlier layers; top3: the 3 largest"),
    Choice("band", ("25-75", "over-25"),
           "src/neuron_explain.py::generate_explanation_prompt_dict",
           "25-75: 0.25·n ≤ count ≤ 0.75·n (inclusive, n = the unique prompts); over-25: count > 0.25·n, "
           "no upper bound"),
    Choice("explain_prompt", ("neo2024", "neo2023", "minitf"),
           "src/datahandlers.py::ExplanationPromptGen.get_prompt(shots=0)",
           "which wording asks the LLM for an explanation",
           "newlines shown as ⏎ and triple quotes escaped so each example stays one bullet; the examples end "
           "with the token explicitly; a request for two to three sentences"),
    Choice("classify_prompt", ("neo2024", "neo2023", "minitf"),
           "src/datahandlers.py::ClassifyPromptGen.get_prompt()",
           "which wording asks the LLM whether a test prompt is active",
           "names the token and the head, and asks for one word"),
    Choice("system_message", (True, False),
           "notebooks/5_explain.ipynb, 6_evaluate.ipynb (jobs: one user message)",
           "whether a system message precedes the user message",
           "states the task and the answer format once"),
    Choice("temperature", None,
           "notebooks/5_explain.ipynb (no temperature: the API's default 1.0)",
           "the requests' temperature (None: not sent)",
           "0 makes a rerun give the same explanation and answers (and lets the cache be honest)"),
    Choice("explain_max_tokens", None, "notebooks/5_explain.ipynb (max_tokens 200)",
           "max_tokens of the explanation request",
           "two to three sentences with room to finish"),
    Choice("classify_max_tokens", None, "notebooks/6_evaluate.ipynb (max_tokens 1)",
           "max_tokens of the Yes/No request"),
    Choice("logprobs", (True, False), "notebooks/6_evaluate.ipynb (none)",
           "whether the Yes/No request asks for the top log-probabilities",
           "P(Yes) gives a ROC-AUC besides the balanced accuracy"),
    Choice("llm_model", None,
           "notebooks/5_explain.ipynb (gpt-4-1106-preview; neo2023 gpt-4)",
           "the authors' model (None: whatever --model says)",
           "the model is the user's choice"),
    Choice("n_test", None,
           "notebooks/6_evaluate.ipynb (generate_classify_prompt_dict(max_per_nh=10); neo2023 20)",
           "test prompts classified per (neuron, head) pair",
           "more test prompts, a less noisy score"),
    Choice("test_prompts", ("test-corpus", "hash-split"),
           "notebooks/2_max_activating.ipynb (train: pile-10k; test: text_list_dict_test.pkl)",
           "test-corpus: the test prompts come from a separate corpus, mined as the train ones; hash-split: from "
           "the same corpus's test documents (sha256 split)",
           "one corpus is enough; without a test corpus the split is by document hash"),
    Choice("scoring", ("drop-undefined", "rate-fallback", "minitf"),
           "notebooks/7_results.ipynb",
           "drop-undefined: a pair with tp+fn = 0 or tn+fp = 0 is dropped, else (TPR+TNR)/2; rate-fallback: TNR "
           "if TPR is undefined, TPR if TNR is; minitf: balanced accuracy over parsed answers, a pair whose test "
           "labels are all one class skipped with its reason",
           "the skipped pairs are listed with why, and malformed answers are counted"),
    Choice("answers", ("exact", "minitf"),
           "notebooks/7_results.ipynb (content == 'Yes' / == 'No')",
           "exact: only the replies 'Yes' and 'No' count; minitf: case and surrounding space/punctuation ignored",
           "' yes' is an answer"),
    Choice("statistics", ("per-pair", "pooled"),
           "notebooks/8_head_ablation.ipynb (per pair mean drop on active / inactive test prompts; ks_2samp "
           "across pairs)",
           "per-pair: the ablation's drops averaged per (neuron, head) pair on active and on inactive prompts, "
           "compared across pairs with a two-sample KS test; pooled: per-prompt drops pooled over pairs",
           "pooling uses every prompt's drop (more power); the per-pair version is reported beside it"),
    Choice("ablation_prompts", ("test", "train"),
           "notebooks/8_head_ablation.ipynb (the test trimmed prompts of each neuron)",
           "which prompts the ablation runs on",
           "the train prompts are the ones the heads were selected on"),
    Choice("exclude", ("paper", "none"),
           "notebooks/1_find_neurons.ipynb (rejected_neurons, per model)",
           "paper: the authors' hand-made reject list of the checkpoint (GPT-2 small/medium/large/XL, "
           "Pythia-160m); none: no list",
           "the lists were made by hand for the authors' checkpoints; minitf shows every neuron"),
)
CHOICE = {c.name: c for c in CHOICES}


@dataclass(frozen=True)
class Protocol:
    """One value per choice (see ``CHOICES`` for what each means and the authors' code it follows)."""

    name: str
    neuron_walk: str
    token_filter: str
    congruence_weights: str
    trimming: str
    trim_bos: bool
    max_prompt_tokens: int
    prompt_tokens_counted: str
    newlines: str
    attribution_tokens: str
    n_candidates: int
    n_prompts: int
    duplicates: str
    head_rule: str
    band: str
    explain_prompt: str
    classify_prompt: str
    system_message: bool
    temperature: float | None
    explain_max_tokens: int
    classify_max_tokens: int
    logprobs: bool
    llm_model: str | None
    n_test: int
    test_prompts: str
    scoring: str
    answers: str
    statistics: str
    ablation_prompts: str
    exclude: str
    overridden: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        for c in CHOICES:
            v = getattr(self, c.name)
            if c.values is not None and v not in c.values:
                raise MinitfError(f"protocol {self.name}: {c.name}={v!r}; choose from "
                                  f"{', '.join(map(str, c.values))}")
        for name in ("max_prompt_tokens", "n_candidates", "n_prompts", "n_test", "explain_max_tokens",
                     "classify_max_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise MinitfError(f"protocol {self.name}: {name}={getattr(self, name)!r}: must be a positive integer")

    def with_overrides(self, **flags: Any) -> "Protocol":
        """The same protocol with single choices changed (a flag such as ``--rule top3``); those whose value
        differs are recorded in ``overridden``. A flag given as None means "not given" and changes nothing."""
        changes = {k: v for k, v in flags.items() if v is not None}
        if unknown := set(changes) - set(CHOICE):
            raise MinitfError(f"unknown protocol choice {sorted(unknown)[0]!r}; choose from {', '.join(CHOICE)}")
        changed = tuple(k for k, v in changes.items() if getattr(self, k) != v)
        return replace(self, **changes, overridden=tuple(dict.fromkeys(self.overridden + changed)))

    def choices(self) -> dict[str, Any]:
        """{choice: value} in ``CHOICES`` order."""
        return {c.name: getattr(self, c.name) for c in CHOICES}

    def describe(self) -> dict[str, Any]:
        """The record of ``settings.protocol``: {"name", "choices": {choice: value}, "overridden": [choice]}."""
        return {"name": self.name, "choices": self.choices(), "overridden": list(self.overridden)}

    def record(self) -> "ProtocolRecord":
        """``describe()`` as the typed record a trace keeps (``settings.protocol``)."""
        return ProtocolRecord(self.name, self.choices(), list(self.overridden))

    def differences(self, other: "Protocol") -> dict[str, tuple[Any, Any]]:
        """{choice: (self's value, other's value)} where the two differ."""
        return {k: (v, getattr(other, k)) for k, v in self.choices().items() if getattr(other, k) != v}


TRACE_CHOICES = ("trimming", "trim_bos", "newlines", "attribution_tokens", "n_prompts", "duplicates", "head_rule",
                 "band")  # the choices a trace makes, shown in its header


@dataclass
class ProtocolRecord(Record):
    """``settings.protocol`` of a trace: the protocol's name, each choice's value, the choices a flag overrode."""

    name: str
    choices: dict[str, Any]
    overridden: list[str] = field(default_factory=list)

    def line(self, keys: tuple[str, ...] = TRACE_CHOICES) -> str:
        """One line: "protocol neo2024: trimming authors, …, head_rule top3 (overridden)"."""
        shown = [f"{k} {self.choices[k]}{' (overridden)' if k in self.overridden else ''}"
                 for k in keys if k in self.choices]
        return f"protocol {self.name}: " + ", ".join(shown)


NEO2024 = Protocol(
    name="neo2024", neuron_walk="skip", token_filter="authors", congruence_weights="transformerlens",
    trimming="authors", trim_bos=False, max_prompt_tokens=100, prompt_tokens_counted="text", newlines="space",
    attribution_tokens="retokenized", n_candidates=30, n_prompts=20, duplicates="collapse", head_rule="sigma2",
    band="25-75", explain_prompt="neo2024", classify_prompt="neo2024", system_message=False, temperature=None,
    explain_max_tokens=200, classify_max_tokens=1, logprobs=False, llm_model="gpt-4-1106-preview", n_test=10,
    test_prompts="test-corpus", scoring="drop-undefined", answers="exact", statistics="per-pair",
    ablation_prompts="test", exclude="paper")
NEO2023 = replace(
    NEO2024, name="neo2023", n_prompts=30, head_rule="top3", band="over-25", explain_prompt="neo2023",
    classify_prompt="neo2023", llm_model="gpt-4", n_test=20, scoring="rate-fallback")
MINITF = replace(
    NEO2024, name="minitf", neuron_walk="filtered-argmax", token_filter="minitf", trimming="minitf", trim_bos=True,
    prompt_tokens_counted="with-bos", newlines="keep", attribution_tokens="as-mined", duplicates="refill",
    explain_prompt="minitf", classify_prompt="minitf", system_message=True, temperature=0.0,
    explain_max_tokens=256, logprobs=True, llm_model=None, n_test=30, test_prompts="hash-split",
    scoring="minitf", answers="minitf", statistics="pooled", ablation_prompts="train", exclude="none")
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (NEO2024, NEO2023, MINITF)}
DEFAULT = "neo2024"


def get_protocol(name: str | Protocol | None = None, **overrides: Any) -> Protocol:
    """``PROTOCOLS[name]`` (None: the default, neo2024), with ``overrides`` applied (see ``with_overrides``)."""
    if isinstance(name, Protocol):
        p = name
    else:
        name = DEFAULT if name is None else name
        if name not in PROTOCOLS:
            raise MinitfError(f"--protocol {name}: choose from {', '.join(PROTOCOLS)}")
        p = PROTOCOLS[name]
    return p.with_overrides(**overrides) if overrides else p


# --------------------------------------------------------------------------- the authors' reject lists
@dataclass(frozen=True)
class RejectList:
    """The authors' hand-made list of neurons to skip for one checkpoint (glitch-token neurons and the like).

    Matched to a model by ``sha256`` of its weights when known (none is known offline: all None today), else by
    its folder's name (``names``: "gpt2", "gpt2-medium", …, also inside a Hugging Face cache path), else by
    its shape (n_layer, d_model, n_head, d_vocab) — a fine-tuned checkpoint of the same shape then gets the
    list too, which the record says (``RejectMatch.how``).
    """

    model: str
    names: tuple[str, ...]
    shape: tuple[int, int, int, int]  # (n_layer, d_model, n_head, d_vocab)
    neurons: tuple[tuple[int, int], ...]
    source: str
    sha256: str | None = None

    def __contains__(self, neuron) -> bool:
        return (int(neuron[0]), int(neuron[1])) in set(self.neurons)


_NB1 = "notebooks/1_find_neurons.ipynb rejected_neurons"
REJECT_LISTS: tuple[RejectList, ...] = (
    RejectList("gpt2-small", ("gpt2", "gpt2-small"), (12, 768, 12, 50257),
               ((9, 2322), (9, 2894), (11, 3033)), _NB1 + " ('GPT-2 Small, 20 neurons per layer')"),
    RejectList("gpt2-medium", ("gpt2-medium",), (24, 1024, 16, 50257),
               ((23, 3671), (23, 3177)), _NB1 + " (gpt2-medium)"),
    # gpt2-large: the main list (layers 31-35, 'GPT-2 Large, 40 neurons per layer') and the 'mid' list
    # (layers 16-20, 'GPT-2-large mid') are for the same checkpoint and disjoint layers: both apply.
    RejectList("gpt2-large", ("gpt2-large",), (36, 1280, 20, 50257),
               ((31, 4172), (31, 4899), (32, 4361), (33, 1582), (33, 122), (33, 2587), (34, 2978), (34, 805),
                (35, 274), (35, 920), (35, 4849), (35, 684), (35, 4396), (35, 295), (35, 3065), (35, 989),
                (16, 2727), (16, 523), (17, 4787), (18, 2078), (18, 123), (18, 4681), (19, 5095), (19, 4034),
                (20, 2259), (16, 4244), (20, 795)),
               _NB1 + " ('GPT-2 Large, 40 neurons per layer' and 'GPT-2-large mid')"),
    RejectList("gpt2-xl", ("gpt2-xl",), (48, 1600, 25, 50257),
               ((44, 1657), (45, 284), (45, 4415), (46, 1785), (46, 1795), (47, 2065), (47, 1147), (47, 3489),
                (47, 4845), (47, 5429), (47, 4019), (43, 403), (47, 6356), (47, 3775), (47, 3635)),
               _NB1 + " (gpt2-xl)"),
    # Pythia is not a GPT-2 architecture and minitf does not load it; the list is kept for the record.
    RejectList("pythia-160m", ("pythia-160m",), (12, 768, 12, 50304),
               ((9, 2871), (10, 741), (10, 336), (11, 1266), (11, 493), (11, 817), (11, 922), (11, 2790),
                (11, 1953), (11, 2209), (11, 2631), (11, 2640), (11, 803), (11, 875), (11, 2856), (11, 1240),
                (11, 339), (11, 1248), (11, 1994), (11, 1828), (11, 1076), (11, 1347), (11, 110), (11, 45),
                (11, 334), (11, 1932)),
               _NB1 + " ('pythia 160m', neo2024 only)"),
)
# Not built in: the unlabelled neo2024 list [(10, 457), (11, 2627)] (a 12-layer model the code does not name).


@dataclass(frozen=True)
class RejectMatch:
    """Which reject list applies to a model, and how it was found: ``how`` is "sha256", "name", "shape" or
    "none"; ``note`` is the one line a record shows."""

    reject: RejectList | None
    how: str
    note: str

    @property
    def neurons(self) -> frozenset:
        return frozenset(self.reject.neurons) if self.reject else frozenset()


def _folder_names(folder: Path | None) -> set[str]:
    """Lower-case names a model folder may go by: its own and its parents' (a Hugging Face cache path
    models--openai-community--gpt2/snapshots/<hash> gives "gpt2")."""
    if folder is None:
        return set()
    out = set()
    for part in Path(folder).parts[-4:]:
        part = part.lower()
        out.add(part)
        if part.startswith("models--"):
            out.add(part.split("--")[-1])
    return out


def parse_exclude(value: str | None) -> str | None:
    """``--exclude`` of ``neurons``: "paper", "none", or None (the protocol's); else ValueError."""
    if value not in (None, "paper", "none"):
        raise ValueError(f"{value}: choose paper or none")
    return value


def reject_list(model, exclude: str = "paper", sha256: str | None = None) -> RejectMatch:
    """The reject list for ``model`` under ``exclude`` ("paper" | "none"): by weights' sha256, else folder
    name, else shape (see ``RejectList``). A model without a list gets none, and the note says so."""
    if exclude == "none":
        return RejectMatch(None, "none", "no reject list (--exclude none)")
    if exclude != "paper":
        raise MinitfError(f"--exclude {exclude}: choose paper or none")
    for r in REJECT_LISTS:
        if sha256 is not None and r.sha256 == sha256:
            return RejectMatch(r, "sha256", f"the authors' reject list for {r.model} ({len(r.neurons)} neurons; "
                                            f"matched by the weights' sha256)")
    names = _folder_names(getattr(model, "folder", None))
    for r in REJECT_LISTS:
        if names & set(r.names):
            return RejectMatch(r, "name", f"the authors' reject list for {r.model} ({len(r.neurons)} neurons; "
                                          f"matched by the folder's name)")
    c = model.cfg
    shape = (c.n_layer, c.d_model, c.n_head, c.d_vocab)
    for r in REJECT_LISTS:
        if r.shape == shape:
            return RejectMatch(r, "shape", f"the authors' reject list for {r.model} ({len(r.neurons)} neurons; "
                                           f"matched by shape {shape}: no sha256 of the authors' weights is known)")
    return RejectMatch(None, "none", "no reject list: the authors made none for this model")
