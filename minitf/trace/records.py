"""The trace's typed records: ``to_json()`` writes the schema of docs/trace.schema.json and ``from_json()`` reads
it back (``minitf.util.records``). ``minitf.trace`` makes them; the report, explain and study read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minitf.errors import MinitfError
from minitf.paths import PathsRecord
from minitf.prompts import Mined
from minitf.protocol import ProtocolRecord
from minitf.scores import ScoresMode, scores_mode
from minitf.util.records import Record, from_json, optional_field, record_field, to_json
from minitf.why import HeadWhy

SCHEMA_VERSION = 2

# ---- the trace's records: to_json() writes docs/trace.schema.json, from_json() reads it (``minitf.util.records``)
@dataclass
class TokenRef(Record):
    id: int
    text: str | None = field(metadata={"key": "str"})  # None: the id decodes to no text of its own


@dataclass
class TokenValue(Record):
    id: int
    token: str
    value: float


@dataclass
class NeuronCard(Record):
    """W_out[n] through the ln_f-folded, centred unembedding (``neurons.neuron_card``); ``token``: the one it pushes.
    Everything past ``token`` may be missing in a card made by hand."""

    name: str
    layer: int
    index: int
    token: TokenRef = record_field(TokenRef)
    congruence: float | None = optional_field()
    rank: int | None = optional_field()
    layer_size: int | None = optional_field()
    promoted: list[TokenValue] | None = optional_field(record=TokenValue, many=True)
    suppressed: list[TokenValue] | None = optional_field(record=TokenValue, many=True)
    kurtosis: float | None = optional_field()
    skew: float | None = optional_field()
    kind: str | None = optional_field(key="class")  # "prediction", "suppression" or ""


@dataclass
class Source(Record):
    """A source position a head looked up: its part of the head's context part, and the attention paid to it."""

    position: int
    token: str
    effect: float
    attention: float


@dataclass
class TopHead(Record):
    """One of a prompt's top heads at its last token (by the selecting score)."""

    head: str
    effect: float  # context + constant
    context: float
    constant: float
    active: bool
    sources: list[Source] = record_field(Source, many=True)
    why: HeadWhy | None = optional_field(record=HeadWhy, many=False)  # --why: why it looked at these sources


@dataclass
class PositionHead(Record):
    head: str
    effect: float
    context: float


@dataclass
class Position(Record):
    """One position of a prompt (``per_position``): the activation there and its top heads."""

    activation: float
    pre: float
    heads: list[PositionHead] = record_field(PositionHead, many=True)


@dataclass
class Components(Record):
    """The direct effects at the last token that are not the candidate heads' own."""

    embed: float
    pos_embed: float
    heads: float  # Σ of every head's effect
    attn_bias: list[float]
    mlp: list[float]
    constant: float


@dataclass
class PromptRecord(Record):
    text: str
    tokens: list[str]
    truncated: bool
    mined: Mined | None = record_field(Mined)  # None: a given prompt
    activation: float  # post-GELU at the last token
    pre: float
    sigma: float
    components: Components = record_field(Components)
    identity_error: float
    active_heads: list[str]
    top_heads: list[TopHead] = record_field(TopHead, many=True)
    positions: list[Position] | None = optional_field(record=Position, many=True)


@dataclass
class KS(Record):
    statistic: float
    p_value: float


@dataclass
class Ablation(Record):
    """Δ when the head is removed at all positions (``ScoresMode.removed``): means over the prompts, over its
    active and inactive ones, the KS test of Δp active vs inactive; ``d_post``/``d_p`` [P]: the drops themselves
    (in memory only: ``minitf.study.run`` pools them)."""

    mean_dpost: float
    mean_dp: float
    mean_dpost_active: float | None
    mean_dpost_inactive: float | None
    mean_dp_active: float | None
    mean_dp_inactive: float | None
    ks: KS | None = record_field(KS)
    d_post: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"json": False})
    d_p: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"json": False})


@dataclass
class HeadRecord(Record):
    """A candidate head over all prompts."""

    head: str
    layer: int
    index: int
    mean_effect: float
    std_effect: float
    mean_context: float
    std_context: float
    mean_constant: float
    active_count: int
    active_fraction: float
    differential: bool
    ablation: Ablation | None = record_field(Ablation)


@dataclass
class ModelShape(Record):
    folder: str
    n_layer: int
    n_head: int
    d_mlp: int
    n_ctx: int


@dataclass
class PromptOrigin(Record):
    """Where a trace's prompts came from (written among the settings); None: not recorded."""

    bos: bool | None = optional_field()
    notes: list[str] | None = optional_field()
    source: str | None = optional_field()
    corpus: str | None = optional_field()
    split: str | None = optional_field()


@dataclass
class Settings(Record):
    rule: str
    scores: str
    include_same_layer: bool
    candidates: int
    effects: str
    scores_note: str | None = None  # None: the mode's note (``minitf.scores``)
    origin: PromptOrigin = field(default_factory=PromptOrigin, metadata={"flatten": True, "record": PromptOrigin})
    protocol: ProtocolRecord | None = optional_field(record=ProtocolRecord, many=False)  # None: before protocols

    def __post_init__(self):
        self.scores_note = self.scores_note or self.mode.note

    @property
    def mode(self) -> ScoresMode:
        return scores_mode(self.scores)


@dataclass
class IdentityCheck(Record):
    max_abs_error: float
    max_rel_error: float


@dataclass
class Trace(Record):
    """What ``trace`` finds for one neuron (see the module docstring); ``to_json()``: docs/trace.schema.json."""

    model: ModelShape = record_field(ModelShape)
    neuron: NeuronCard = record_field(NeuronCard)
    settings: Settings = record_field(Settings)
    prompts: list[PromptRecord] = record_field(PromptRecord, many=True)
    heads: list[HeadRecord] = record_field(HeadRecord, many=True)
    differential_heads: list[str]
    identity_check: IdentityCheck = record_field(IdentityCheck)
    schema_version: int = SCHEMA_VERSION
    paths: PathsRecord | None = optional_field(record=PathsRecord, many=False)  # ``--paths`` only

    @property
    def mode(self) -> ScoresMode:
        """What selected and ranked the heads, and how the ablation removed them."""
        return self.settings.mode

    def head(self, name: str) -> HeadRecord | None:
        return next((h for h in self.heads if h.head == name), None)

    def to_json(self) -> dict:
        out = to_json(self)
        return {"schema_version": out.pop("schema_version"), **out}

    @classmethod
    def from_json(cls, data, where: str = "trace") -> Trace:
        """A trace from its JSON (``trace --json``, a study's neuron record), schema 2 only."""
        if not isinstance(data, dict):
            raise MinitfError(f"{where}: expected a dict from minitf.trace, got {type(data).__name__}")
        for key in ("neuron", "model", "settings", "prompts", "heads", "differential_heads", "identity_check",
                    "schema_version"):
            if key not in data:
                raise MinitfError(f"{where}: missing key {key!r} (not a trace from minitf.trace?)")
        if data["schema_version"] != SCHEMA_VERSION:
            raise MinitfError(f"{where}: schema_version {data['schema_version']!r}; this minitf reads "
                              f"{SCHEMA_VERSION} (trace the neuron again)")
        return from_json(cls, data, where)


