"""Typed records of what travels on the rig's topics: one msgspec Struct per Avro record of `schemas/`.

Field names, order, types and defaults are those of the `.avsc` files (tests/unit/wire/test_records.py
holds them together): timestamp-millis fields are int milliseconds since the epoch, Avro enums are
Literal strings, a union with null is `X | None`, maps and arrays default to empty. Fields are
keyword-only, so a record reads like its schema.

Records are frozen: build each with its final values, or copy it with `msgspec.structs.replace`.
Construction does not validate types (that is what keeps it cheap on the hot path); the codec does,
when a record is encoded or decoded (`rig.wire.codec.Codec(<record class>)`). Records hold plain
data and never reference themselves, so they are not tracked by the garbage collector (`gc=False`).

Where each is built (one place each): Prediction in `rig.serving.predictions.build_predictions`,
DeadLetter in `rig.wire.intake.dead_letter`, JoinedOutcome in `rig.feedback.join.joined_rows`,
Decision in `rig.feedback.sequential.new_decision`, ControlEvent in the event factories of
`rig.routing.table`, Explanation in `rig.explain.service`. Requests and outcomes come from clients.
Where plain values are needed (fastavro, SQL rows, a JSON web answer), `to_plain` converts a record.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec
import numpy as np

ControlKind = Literal["set_golden", "start_experiment", "stop_experiment", "kill_experiment", "purge_cache"]
"""What a control event changes."""
ExperimentMode = Literal["shadow", "ab"]
"""shadow: scored and recorded, never returned; ab: answers a sticky share of entities."""
ModelRole = Literal["golden", "shadow", "ab"]
"""golden: the model that answers by default; shadow or ab: a challenger in an experiment of that mode."""
DecisionAction = Literal["keep", "promote", "demote"]
"""keep: change nothing; promote: make the challenger golden; demote: roll the golden back."""
PromoterMode = Literal["suggest", "auto", "manual"]
"""suggest: decisions are only recorded; auto: they are applied; manual: a person decided."""
CheckState = Literal["pass", "fail", "pending", "unmeasured"]
"""pass: shown good enough; fail: shown worse (or a sample ratio mismatch); pending: not shown either
way yet; unmeasured: no data reaches the promoter."""


class Record(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """Base of the topic records: frozen, untracked by the GC, unknown fields refused on conversion."""


# -- requests and predictions -------------------------------------------------------------------
class Request(Record, kw_only=True, frozen=True):
    """A prediction request for one entity, produced to the requests topic keyed by entity_id."""

    request_id: str
    entity_id: str
    event_time: int
    features: dict[str, float] = msgspec.field(default_factory=dict)
    context: dict[str, str] = msgspec.field(default_factory=dict)


class ModelScore(Record, kw_only=True, frozen=True):
    """The score one model version gave."""

    model_version: str
    score: float


class ExperimentScore(Record, kw_only=True, frozen=True):
    """The score a challenger model gave within one experiment."""

    experiment: str
    model_version: str
    mode: ExperimentMode
    score: float


class Prediction(Record, kw_only=True, frozen=True):
    """The answer to one request: the golden model's score and that of every experiment that scored it."""

    request_id: str
    entity_id: str
    event_time: int
    score: float
    answered_by: str
    golden: ModelScore
    experiments: list[ExperimentScore] = msgspec.field(default_factory=list)
    transform_version: str
    cache_hit: bool = False
    entity_found: bool = True
    timings_ms: dict[str, float] = msgspec.field(default_factory=dict)


class DeadLetter(Record, kw_only=True, frozen=True):
    """A message the rig could not process, with its original bytes and why; produced to the dlq topic."""

    received_at: int
    source_topic: str
    partition: int
    offset: int
    key: bytes | None = None
    original: bytes
    reason: str
    error_type: str
    request_id: str | None = None


# -- feedback -----------------------------------------------------------------------------------
class Outcome(Record, kw_only=True, frozen=True):
    """The observed label of an earlier request, produced to the outcomes topic."""

    request_id: str
    entity_id: str
    label: int
    event_time: int


class JoinedOutcome(Record, kw_only=True, frozen=True):
    """One model's score for one request joined with the request's outcome; one row per model per request."""

    request_id: str
    entity_id: str
    model_version: str
    role: ModelRole
    experiment: str | None = None
    score: float
    label: int
    prediction_time: int
    outcome_time: int
    golden_model_version: str | None = None
    golden_score: float | None = None


class DecisionCheck(Record, kw_only=True, frozen=True):
    """Where one test of the challenger stood when the decision was taken."""

    name: str
    state: CheckState
    n: int
    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    margin: float | None = None
    p_value: float | None = None
    detail: str = ""


class Decision(Record, kw_only=True, frozen=True):
    """One decision of the promoter about a golden and a challenger, with the evidence it rests on."""

    decision_id: str
    decided_at: int
    action: DecisionAction
    mode: PromoterMode
    golden_version: str
    challenger_version: str | None = None
    metric: str
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float | None = None
    e_value: float | None = None
    reason: str
    checks: list[DecisionCheck] = msgspec.field(default_factory=list)


# -- routing ------------------------------------------------------------------------------------
class ControlEvent(Record, kw_only=True, frozen=True):
    """A change of routing state, on the compacted control topic keyed by what it controls."""

    event_id: str
    issued_at: int
    kind: ControlKind
    model_version: str | None = None
    experiment: str | None = None
    mode: ExperimentMode | None = None
    traffic_share: float | None = None
    traffic_cap_rps: float | None = None
    actor: str
    reason: str = ""
    entity_id: str | None = None


# -- explanations -------------------------------------------------------------------------------
class FeatureContribution(Record, kw_only=True, frozen=True):
    """One feature's signed contribution to the margin."""

    feature: str
    value: float | None
    contribution: float


class ShapValues(Record, kw_only=True, frozen=True):
    """TreeSHAP of one row, in margin (log-odds) units: bias plus all contributions equals margin."""

    margin: float
    score: float
    bias: float
    top: list[FeatureContribution]
    contributions: dict[str, float]


class Condition(Record, kw_only=True, frozen=True):
    """lower < feature <= upper, or feature is missing."""

    feature: str
    lower: float | None
    upper: float | None
    missing: bool


class AnchorRule(Record, kw_only=True, frozen=True):
    """Anchors-style rule under which the model keeps a decision with the stated precision."""

    rule: str
    conditions: list[Condition]
    decision: bool
    precision: float
    precision_lower: float
    coverage: float
    n_samples: int
    met_target: bool


class FeatureChange(Record, kw_only=True, frozen=True):
    """One changed feature of a counterfactual."""

    feature: str
    from_value: float | None
    to_value: float


class Counterfactual(Record, kw_only=True, frozen=True):
    """A verified decision flip: the smallest found change of allowed features."""

    changes: list[FeatureChange]
    original_score: float
    score: float
    decision: bool
    distance: float


class Explanation(Record, kw_only=True, frozen=True):
    """Explanation of one model's score for one request: TreeSHAP, an anchor rule and a counterfactual."""

    request_id: str
    entity_id: str
    model_version: str
    explanation_key: str
    score: float
    decision: bool
    threshold: float
    shap: ShapValues
    anchor: AnchorRule
    counterfactual: Counterfactual | None = None
    counterfactual_note: str = ""


TOPIC_RECORDS: tuple[type[Record], ...] = (
    Request,
    Prediction,
    Outcome,
    JoinedOutcome,
    Decision,
    ControlEvent,
    DeadLetter,
    Explanation,
)
"""The records with a schema file of their own (`schemas/<name>.avsc`); the others are nested in them."""


def to_plain(value: Any) -> Any:
    """A record (or anything holding records) as plain Python values: dicts in field order, lists,
    str, int, float, bool and None, with bytes and datetimes kept as they are and numpy scalars as
    their Python values. What fastavro writes, SQL stores and JSON carries.

    Raises:
        TypeError: a value of another type (the message names it).
    """
    return msgspec.to_builtins(value, builtin_types=(bytes, dt.datetime), enc_hook=_numpy_scalar)


def _numpy_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a record value")
