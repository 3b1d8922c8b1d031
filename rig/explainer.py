"""Per-request explanations of an XGBoost binary model: TreeSHAP, an Anchors-style rule, a counterfactual.

Everything works on the model's input matrix: `feature_names` are the model's columns (transform
outputs such as `chargeback_count_90d_bucket`), rows are float32 vectors in that order, and the
`reference` is a sample of such rows (e.g. the training matrix) that stands for "typical data".
The decision is `score >= threshold`, `score` being the model's probability (`binary:logistic`).

- `shap`: exact TreeSHAP from XGBoost itself (`Booster.predict(..., pred_contribs=True)`), in margin
  (log-odds) units: per row, the contributions of all features plus the bias equal the margin.
  `top` holds the `top_k` largest by absolute value, signed.
- `anchor`: a conjunction of interval conditions on a few features (bins from reference quantiles
  around the row's value, or the half-lines that extend a bin outwards) under which the model keeps
  the row's decision with precision >= `precision_target`. Precision is estimated on perturbations:
  a random reference row whose anchored features, where they break a condition, are redrawn from
  the reference values that satisfy it. Search: beam search over rule size; each step screens every
  one-condition extension of the beam on `anchor_batch` shared perturbations (common random numbers,
  one predict call), then re-estimates a short list on `anchor_confirm` fresh perturbations; the
  reported precision is that fresh estimate, with a KL lower confidence bound (as in KL-LUCB).
  Among rules meeting the target at the smallest size the one of largest coverage wins; coverage is
  the share of the reference that satisfies the rule. When no rule of at most `max_anchor_size`
  conditions meets the target the most precise one is returned with `met_target=False`.
- `counterfactual` (in the spirit of CEM's pertinent negatives): the smallest change of the mutable
  features that flips the decision. Candidate values of a feature are reference quantiles (values
  that occur in data); distance is the L1 norm in per-feature reference IQR units (std when the IQR
  is 0; changing a missing value costs 1). Beam search by number of changed features (at most
  `max_changes`): each level tries every change of one more feature on each partial counterfactual
  (one predict call); the first level where some change flips the decision returns the flip of least
  total distance (fewest features first, then least distance); otherwise the beam keeps the partial
  counterfactuals that moved the margin most, half of them by absolute move and half per unit of
  distance. Each change is then shrunk back towards the original value as far as the flip survives.
  The result is re-predicted with the model before it is returned; `None` means no flip within the
  budget (`Explanation.counterfactual_note` says so in words).
  Caveat: columns derived from one raw feature (a value and its bucket, a missing flag) are separate
  model columns; put only columns that can change independently in `mutable`.

All searches are deterministic given `seed` (each call draws from a fresh generator seeded by it).

Library decision (checked in throwaway venvs with Python 3.11, numpy 2.4.6, xgboost-cpu 3.2.0):
- XGBoost's `pred_contribs` is exact TreeSHAP and needs no dependency: used.
- `shap` 0.51.0 installs and imports cleanly with this stack, and `TreeExplainer(booster).shap_values`
  equals `pred_contribs` exactly (max abs difference 0.0, same expected value) — for XGBoost models it
  is the same computation. It would add numba, llvmlite and scikit-learn (~260 MB) and ~2.4 s of
  import for no new number: not used.
- `alibi` (Anchors, CEM): the current 0.9.6 requires numpy<2 (pip: ResolutionImpossible with numpy
  2.4.6), pins old scikit-image/Pillow/attrs, and is under the Business Source License 1.1 (no
  production use without a commercial licence). Unpinned, pip falls back to alibi 0.5.5 (2020), which
  drags in TensorFlow 2.21, spaCy and scikit-image (a 3.1 GB venv, ~7.6 s import); its AnchorTabular
  runs (4.2 s for one toy explanation) but its CEM is TF1-session code that fails to construct under
  TF 2.21 (`keras.backend` has no `get_session`): not used. The Anchors-style search and the
  counterfactual are implemented here in numpy, vectorised (one predict call per search step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rig.errors import ExplainerError

if TYPE_CHECKING:
    import xgboost

KEY_FORMAT = b"rig-explanation/1"
"""Part of every explanation key: changing the key or explanation format changes the whole key space."""

_ANCHOR_STREAM = 0xA1
_FLIP_EPS = 1e-6  # margin units a counterfactual must cross the threshold by
_MIN_REFERENCE_ROWS = 10
_SCREEN_SLACK = 0.02  # a screened rule this close to the precision target is confirmed when it is wide


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tuples as lists, NaN as None."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


class _Record:
    """Mixin of the explanation dataclasses: `to_dict` gives JSON-ready fields."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]


def _fmt(value: float) -> str:
    return f"{value:.6g}"


@dataclass(frozen=True, slots=True)
class ExplainerOptions:
    """Search budgets and targets of an `Explainer`."""

    top_k: int = 5
    """Contributions listed in `ShapExplanation.top`."""
    precision_target: float = 0.95
    """Precision an anchor must reach on fresh perturbations."""
    max_anchor_size: int = 6
    """Most conditions in an anchor."""
    beam_width: int = 2
    """Rules kept per anchor size."""
    anchor_batch: int = 200
    """Perturbations per candidate rule in the screening round."""
    anchor_confirm: int = 2000
    """Fresh perturbations per short-listed rule; the reported precision uses these."""
    confidence: float = 0.95
    """Confidence of `Anchor.precision_lower`."""
    bin_quantiles: tuple[float, ...] = (0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98)
    """Reference quantiles that cut each feature into anchor bins."""
    max_changes: int = 3
    """Most features a counterfactual changes."""
    counterfactual_beam: int = 8
    """Partial counterfactuals kept per number of changed features."""
    counterfactual_grid: int = 50
    """Reference quantiles (evenly spaced in 1 %..99 %) tried as counterfactual values per feature."""

    def __post_init__(self) -> None:
        counts = ("top_k", "max_anchor_size", "beam_width", "anchor_batch", "anchor_confirm")
        bad = [name for name in (*counts, "max_changes", "counterfactual_beam") if getattr(self, name) < 1]
        if bad or self.counterfactual_grid < 2:
            raise ExplainerError(f"explainer options {bad or ['counterfactual_grid']} are too small")
        if not 0 < self.precision_target < 1 or not 0 < self.confidence < 1:
            raise ExplainerError("precision_target and confidence must lie in (0, 1)")
        if not self.bin_quantiles or not all(0 < q < 1 for q in self.bin_quantiles):
            raise ExplainerError(f"bin_quantiles must lie in (0, 1): {self.bin_quantiles}")


@dataclass(frozen=True, slots=True)
class FeatureContribution(_Record):
    """One feature's signed SHAP contribution (margin units) and the row's value of it."""

    feature: str
    value: float
    contribution: float


@dataclass(frozen=True, slots=True)
class ShapExplanation(_Record):
    """TreeSHAP of one row: `bias + sum(contributions) == margin`; `score = sigmoid(margin)`."""

    features: tuple[str, ...]
    contributions: tuple[float, ...]
    """One per feature, in `features` order."""
    bias: float
    margin: float
    score: float
    top: tuple[FeatureContribution, ...]
    """The largest contributions by absolute value, largest first."""

    def to_dict(self) -> dict[str, Any]:
        data = _Record.to_dict(self)
        data["contributions"] = dict(zip(data.pop("features"), data["contributions"], strict=True))
        return data


@dataclass(frozen=True, slots=True)
class Condition(_Record):
    """`lower < feature <= upper` (a missing bound is unbounded; NaN never holds), or `feature is missing`."""

    feature: str
    lower: float | None = None
    upper: float | None = None
    missing: bool = False

    def holds(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of the `values` (one feature's column) that satisfy the condition."""
        values = np.asarray(values)
        if self.missing:
            return np.isnan(values)
        mask = ~np.isnan(values)
        if self.lower is not None:
            mask &= values > self.lower
        if self.upper is not None:
            mask &= values <= self.upper
        return mask

    def __str__(self) -> str:
        if self.missing:
            return f"{self.feature} is missing"
        if self.lower is None and self.upper is None:
            return f"{self.feature} is present"
        if self.lower is None:
            return f"{self.feature} <= {_fmt(self.upper)}"  # type: ignore[arg-type]
        if self.upper is None:
            return f"{self.feature} > {_fmt(self.lower)}"
        return f"{_fmt(self.lower)} < {self.feature} <= {_fmt(self.upper)}"


@dataclass(frozen=True, slots=True)
class Anchor(_Record):
    """A rule under which the model keeps the row's decision with precision `precision`."""

    conditions: tuple[Condition, ...]
    decision: bool
    """The decision (`score >= threshold`) the rule keeps."""
    precision: float
    """Share of `n_samples` fresh perturbations satisfying the rule on which the decision stays."""
    precision_lower: float
    """KL lower confidence bound of the precision (at the explainer's `confidence`)."""
    coverage: float
    """Share of the reference sample that satisfies the rule."""
    n_samples: int
    met_target: bool

    @property
    def rule(self) -> str:
        """The rule in words; `(any row)` for the empty rule."""
        return " AND ".join(map(str, self.conditions)) or "(any row)"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, **_Record.to_dict(self)}


@dataclass(frozen=True, slots=True)
class FeatureChange(_Record):
    """One changed feature of a counterfactual (`from_value` NaN when it was missing)."""

    feature: str
    from_value: float
    to_value: float


@dataclass(frozen=True, slots=True)
class Counterfactual(_Record):
    """Changes of mutable features that flip the decision, verified by re-predicting."""

    changes: tuple[FeatureChange, ...]
    original_score: float
    score: float
    decision: bool
    """The new decision (the opposite of the row's)."""
    distance: float
    """L1 distance in per-feature reference scale units."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """SHAP, anchor and counterfactual of one row."""

    score: float
    decision: bool
    threshold: float
    shap: ShapExplanation
    anchor: Anchor
    counterfactual: Counterfactual | None
    counterfactual_note: str
    """Why there is no counterfactual, or an empty string."""

    def to_dict(self) -> dict[str, Any]:
        counterfactual = None if self.counterfactual is None else self.counterfactual.to_dict()
        return {
            "score": self.score,
            "decision": self.decision,
            "threshold": self.threshold,
            "shap": self.shap.to_dict(),
            "anchor": self.anchor.to_dict(),
            "counterfactual": counterfactual,
            "counterfactual_note": self.counterfactual_note,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)


def explanation_key(model_version: str, row: Any) -> str:
    """Stable hex SHA-256 of the model version and the canonical row, for caching explanations.

    The row is canonical as the prediction cache keys it: little-endian float32 (what XGBoost
    predicts on), -0.0 as 0.0, one NaN bit pattern. A model version pins its transform.

    Raises:
        ExplainerError: the row is not a 1-D numeric vector (or a single-row matrix).
    """
    values = _as_vector(row)
    canonical = np.ascontiguousarray(values + np.float32(0.0), dtype="<f4")  # -0.0 + 0.0 == +0.0
    canonical[np.isnan(canonical)] = np.float32("nan")
    version = model_version.encode()
    header = b"\0".join((KEY_FORMAT, str(len(version)).encode(), version, str(canonical.size).encode()))
    return hashlib.sha256(header + b"\0" + canonical.tobytes()).hexdigest()


def _as_vector(row: Any) -> np.ndarray:
    try:
        values = np.asarray(row, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ExplainerError(f"a row must be numeric: {exc}") from exc
    if values.ndim == 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 1:
        raise ExplainerError(f"a row must be 1-D (or one row of a matrix), got shape {values.shape}")
    return values


def _kl_bernoulli(p: float, q: float) -> float:
    p, q = min(max(p, 1e-12), 1 - 1e-12), min(max(q, 1e-12), 1 - 1e-12)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _kl_lower_bound(p: float, n: int, confidence: float) -> float:
    """Smallest q <= p with n * KL(p, q) <= log(1 / (1 - confidence)) (bisection)."""
    level = math.log(1.0 / (1.0 - confidence)) / n
    lo, hi = 0.0, p
    for _ in range(40):
        mid = (lo + hi) / 2
        if _kl_bernoulli(p, mid) > level:
            lo = mid
        else:
            hi = mid
    return hi


class Explainer:
    """Explanations of one XGBoost `binary:logistic` booster.

    Args:
        booster: the model.
        feature_names: the model's columns, in matrix order.
        reference: sample of model-input rows (n x len(feature_names)), e.g. the training matrix.
        threshold: decision threshold on the score, in (0, 1).
        mutable: features a counterfactual may change; all when None.
        seed: seed of the perturbation draws.
        options: search budgets and targets.

    Raises:
        ExplainerError: inconsistent names, reference or options, or not a binary:logistic model.
    """

    def __init__(
        self,
        booster: xgboost.Booster,
        feature_names: Sequence[str],
        reference: np.ndarray,
        threshold: float = 0.5,
        mutable: Sequence[str] | None = None,
        seed: int = 0,
        options: ExplainerOptions | None = None,
    ) -> None:
        names = tuple(feature_names)
        if not names or len(set(names)) != len(names):
            raise ExplainerError(f"feature names must be unique and non-empty: {names}")
        if booster.num_features() != len(names):
            raise ExplainerError(f"booster reads {booster.num_features()} features, got {len(names)} names")
        if booster.feature_names is not None and tuple(booster.feature_names) != names:
            raise ExplainerError(f"feature names {names} differ from the booster's {booster.feature_names}")
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        if objective != "binary:logistic":
            raise ExplainerError(f"explainer supports binary:logistic models, got {objective}")
        if not 0 < threshold < 1:
            raise ExplainerError(f"threshold must lie in (0, 1), got {threshold}")
        unknown = sorted(set(mutable or ()) - set(names))
        if unknown:
            raise ExplainerError(f"mutable features not among the model's features: {unknown}")
        ref = np.asarray(reference, dtype=np.float32)
        if ref.ndim != 2 or ref.shape[1] != len(names) or ref.shape[0] < _MIN_REFERENCE_ROWS:
            raise ExplainerError(
                f"reference must be at least {_MIN_REFERENCE_ROWS} x {len(names)}, got shape {ref.shape}"
            )
        if np.isinf(ref).any():
            raise ExplainerError("reference holds infinite values")
        self.booster = booster
        self.feature_names = names
        self.threshold = float(threshold)
        allowed = set(names if mutable is None else mutable)
        self.mutable = tuple(name for name in names if name in allowed)
        self._mutable = [j for j, name in enumerate(names) if name in allowed]
        self.seed = seed
        self.options = options or ExplainerOptions()
        self._reference = np.ascontiguousarray(ref)
        self._index = {name: j for j, name in enumerate(names)}
        self._margin_threshold = math.log(threshold / (1 - threshold))
        self._sorted = [np.sort(col[~np.isnan(col)]) for col in self._reference.T]
        self._edges = [self._quantiles(v, self.options.bin_quantiles) for v in self._sorted]
        grid = np.linspace(0.01, 0.99, self.options.counterfactual_grid)
        self._grid = [self._quantiles(v, grid) for v in self._sorted]
        self._scale = np.array([self._spread(v) for v in self._sorted])

    @staticmethod
    def _quantiles(values: np.ndarray, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """Distinct reference values at quantiles `q` (values that occur in the data, float32)."""
        if values.size == 0:
            return values
        return np.unique(np.quantile(values, q, method="lower").astype(np.float32))

    @staticmethod
    def _spread(values: np.ndarray) -> float:
        if values.size == 0:
            return 1.0
        q25, q75 = np.quantile(values.astype(np.float64), [0.25, 0.75])
        spread = float(q75 - q25) or float(np.std(values.astype(np.float64)))
        return spread if spread > 0 and math.isfinite(spread) else 1.0

    # ------------------------------------------------------------------------------------ helpers
    def _row(self, row: Any) -> np.ndarray:
        values = _as_vector(row)
        if values.size != len(self.feature_names):
            raise ExplainerError(f"row has {values.size} values, the model reads {len(self.feature_names)}")
        if np.isinf(values).any():
            raise ExplainerError("row holds infinite values")
        return values

    def _margins(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(x, predict_type="margin"), dtype=np.float64)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(x), dtype=np.float64)

    # --------------------------------------------------------------------------------------- SHAP
    def shap(self, rows: Any) -> list[ShapExplanation]:
        """TreeSHAP of each row (a matrix, or one row).

        Raises:
            ExplainerError: rows of the wrong width, or non-numeric or infinite values.
        """
        import xgboost

        try:
            x = np.atleast_2d(np.asarray(rows, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise ExplainerError(f"rows must be numeric: {exc}") from exc
        if x.ndim != 2 or x.shape[1] != len(self.feature_names) or np.isinf(x).any():
            raise ExplainerError(f"rows must be finite n x {len(self.feature_names)}, got shape {x.shape}")
        names = list(self.feature_names) if self.booster.feature_names is not None else None
        matrix = xgboost.DMatrix(x, feature_names=names)
        contribs = np.asarray(self.booster.predict(matrix, pred_contribs=True), dtype=np.float64)
        margins = np.asarray(self.booster.predict(matrix, output_margin=True), dtype=np.float64)
        scores = 1.0 / (1.0 + np.exp(-margins))
        k = min(self.options.top_k, len(self.feature_names))
        order = np.argsort(-np.abs(contribs[:, :-1]), axis=1, kind="stable")[:, :k]
        result = []
        for i in range(x.shape[0]):
            top = tuple(
                FeatureContribution(self.feature_names[j], float(x[i, j]), float(contribs[i, j]))
                for j in order[i]
            )
            result.append(
                ShapExplanation(
                    features=self.feature_names,
                    contributions=tuple(contribs[i, :-1].tolist()),
                    bias=float(contribs[i, -1]),
                    margin=float(margins[i]),
                    score=float(scores[i]),
                    top=top,
                )
            )
        return result

    # ------------------------------------------------------------------------------------- anchor
    def _candidates(self, x: np.ndarray) -> list[Condition]:
        """Per feature: the row's quantile bin, and the half-lines extending it outwards."""
        found: list[Condition] = []
        for j, name in enumerate(self.feature_names):
            if math.isnan(x[j]):
                found.append(Condition(name, missing=True))
                continue
            edges = self._edges[j]
            k = int(np.searchsorted(edges, x[j], side="left"))  # edges[k-1] < x <= edges[k]
            lower = float(edges[k - 1]) if k > 0 else None
            upper = float(edges[k]) if k < edges.size else None
            options = [Condition(name, lower, upper)]
            if lower is not None and upper is not None:
                options += [Condition(name, lower, None), Condition(name, None, upper)]
            found.extend(c for c in options if c.lower is not None or c.upper is not None)
        return found

    def _perturb(
        self, x: np.ndarray, rules: Sequence[Sequence[Condition]], n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """n perturbations per rule, stacked; rules share the base rows and draws (common random numbers)."""
        base = self._reference[rng.integers(0, self._reference.shape[0], n)]
        u = rng.random(base.shape)
        out = np.repeat(base[None], len(rules), axis=0)
        for block, rule in zip(out, rules, strict=True):
            for condition in rule:
                j = self._index[condition.feature]
                bad = ~condition.holds(block[:, j])
                if bad.any():
                    block[bad, j] = self._draw_within(j, condition, u[bad, j], x[j])
        return out.reshape(-1, x.size)

    def _draw_within(self, j: int, condition: Condition, u: np.ndarray, fallback: float) -> np.ndarray:
        if condition.missing:
            return np.full(u.size, np.nan, dtype=np.float32)
        values = self._sorted[j]
        a = 0 if condition.lower is None else int(np.searchsorted(values, condition.lower, side="right"))
        b = values.size if condition.upper is None else int(np.searchsorted(values, condition.upper, "right"))
        if b <= a:  # no reference value satisfies it: keep the row's own value
            return np.full(u.size, fallback, dtype=np.float32)
        return values[np.minimum(a + (u * (b - a)).astype(np.intp), b - 1)]

    def _precisions(
        self, x: np.ndarray, rules: Sequence[Sequence[Condition]], n: int, rng: np.random.Generator
    ) -> np.ndarray:
        decision = self._margins(x[None])[0] >= self._margin_threshold
        same = (self._margins(self._perturb(x, rules, n, rng)) >= self._margin_threshold) == decision
        return same.reshape(len(rules), n).mean(axis=1)

    def anchor_precision(self, row: Any, anchor: Anchor, n_samples: int = 2000, seed: int = 1) -> float:
        """Re-estimate an anchor's precision for `row` on `n_samples` perturbations drawn with `seed`."""
        x = self._row(row)
        return float(self._precisions(x, [anchor.conditions], n_samples, np.random.default_rng(seed))[0])

    def anchor(self, row: Any) -> Anchor:
        """The anchor of `row` (see the module docstring). Raises: ExplainerError for a bad row."""
        x = self._row(row)
        opts = self.options
        rng = np.random.default_rng([self.seed, _ANCHOR_STREAM])
        decision = bool(self._margins(x[None])[0] >= self._margin_threshold)
        candidates = self._candidates(x)  # in feature order, so a sorted rule reads in feature order
        masks = np.stack(
            [c.holds(self._reference[:, self._index[c.feature]]) for c in candidates]
            or [np.ones(self._reference.shape[0], dtype=bool)],
            axis=1,
        )

        def rules(indices: Sequence[tuple[int, ...]]) -> list[tuple[Condition, ...]]:
            return [tuple(candidates[i] for i in rule) for rule in indices]

        best: tuple[tuple[int, ...], float, float] = (
            (),
            float(self._precisions(x, [()], opts.anchor_confirm, rng)[0]),
            1.0,
        )
        beam: list[tuple[int, ...]] = [()]
        while best[1] < opts.precision_target and len(beam[0]) < opts.max_anchor_size:
            expansions = sorted(
                {
                    tuple(sorted((*rule, i)))
                    for rule in beam
                    for i, c in enumerate(candidates)
                    if c.feature not in {candidates[k].feature for k in rule}
                }
            )
            if not expansions:
                break
            screened = self._precisions(x, rules(expansions), opts.anchor_batch, rng)
            coverage = np.array([masks[:, list(rule)].all(axis=1).mean() for rule in expansions])
            # Short list: the most precise, and the widest of those that look good enough.
            precise = np.lexsort((-coverage, -screened))[: 2 * opts.beam_width]
            promising = np.flatnonzero(screened >= opts.precision_target - _SCREEN_SLACK)
            wide = promising[np.argsort(-coverage[promising], kind="stable")][: opts.beam_width]
            order = np.array(list(dict.fromkeys([*precise.tolist(), *wide.tolist()])), dtype=np.intp)
            confirmed = self._precisions(x, rules([expansions[i] for i in order]), opts.anchor_confirm, rng)
            scored = sorted(
                (
                    (expansions[i], float(p), float(coverage[i]))
                    for i, p in zip(order, confirmed, strict=True)
                ),
                key=lambda s: (-s[1], -s[2]),
            )
            valid = [s for s in scored if s[1] >= opts.precision_target]
            if valid or scored[0][1] > best[1]:
                best = max(valid, key=lambda s: (s[2], s[1])) if valid else scored[0]
            beam = [s[0] for s in scored[: opts.beam_width]]
        rule, precision, coverage_share = best
        n = opts.anchor_confirm
        return Anchor(
            conditions=rules([rule])[0],
            decision=decision,
            precision=precision,
            precision_lower=_kl_lower_bound(precision, n, opts.confidence),
            coverage=coverage_share,
            n_samples=n,
            met_target=precision >= opts.precision_target,
        )

    # ----------------------------------------------------------------------------- counterfactual
    def _step_cost(self, x: np.ndarray, js: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Distance of setting features `js` to `values`, from the original row `x`."""
        original = x[js].astype(np.float64)
        cost = np.abs(values.astype(np.float64) - original) / self._scale[js]
        return np.where(np.isnan(original), np.where(np.isnan(values), 0.0, 1.0), cost)

    def _moves(self, x: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (feature, value) change of a mutable feature `current` has not changed yet."""
        free = [j for j in self._mutable if current[j] == x[j] or (np.isnan(x[j]) and np.isnan(current[j]))]
        js = [np.full(int((self._grid[j] != x[j]).sum()), j, dtype=np.intp) for j in free]
        values = [self._grid[j][self._grid[j] != x[j]] for j in free]
        if not js:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
        return np.concatenate(js), np.concatenate(values).astype(np.float32)

    @staticmethod
    def _trials(current: np.ndarray, js: np.ndarray, values: np.ndarray) -> np.ndarray:
        trial = np.repeat(current[None], js.size, axis=0)
        trial[np.arange(js.size), js] = values
        return trial

    def _flips(self, margins: np.ndarray, direction: float) -> np.ndarray:
        return direction * (margins - self._margin_threshold) > _FLIP_EPS

    def counterfactual(self, row: Any) -> Counterfactual | None:
        """The least distant found change of fewest mutable features that flips the decision, or None.

        Raises:
            ExplainerError: a bad row.
        """
        x = self._row(row)
        margin = float(self._margins(x[None])[0])
        decision = margin >= self._margin_threshold
        direction = -1.0 if decision else 1.0
        beam: list[tuple[np.ndarray, float]] = [(x, 0.0)]
        for _ in range(self.options.max_changes):
            moves = [(current, cost, *self._moves(x, current)) for current, cost in beam]
            moves = [m for m in moves if m[2].size]
            if not moves:
                return None
            trials = np.concatenate([self._trials(current, js, v) for current, _, js, v in moves])
            costs = np.concatenate([cost + self._step_cost(x, js, v) for _, cost, js, v in moves])
            margins = self._margins(trials)
            flips = self._flips(margins, direction)
            if flips.any():
                pick = int(np.flatnonzero(flips)[np.argmin(costs[flips])])
                return self._verified(x, self._shrink(x, trials[pick], direction), decision)
            progress = direction * (margins - margin)
            beam = self._next_beam(trials, costs, progress)
            if not beam:
                return None
        return None

    def _next_beam(
        self, trials: np.ndarray, costs: np.ndarray, progress: np.ndarray
    ) -> list[tuple[np.ndarray, float]]:
        """Half the beam: the largest moves towards the flip; the other half: largest per unit distance."""
        width = self.options.counterfactual_beam
        useful = np.flatnonzero(progress > 0)
        by_progress = useful[np.argsort(-progress[useful], kind="stable")]
        by_ratio = useful[np.argsort(-progress[useful] / np.maximum(costs[useful], 1e-12), kind="stable")]
        kept: dict[bytes, tuple[np.ndarray, float]] = {}
        for i in (i for pair in zip(by_progress, by_ratio, strict=True) for i in pair):
            kept.setdefault(trials[i].tobytes(), (trials[i], float(costs[i])))
            if len(kept) == width:
                break
        return list(kept.values())

    def _shrink(self, x: np.ndarray, current: np.ndarray, direction: float) -> np.ndarray:
        """Move each changed feature back towards its original value as far as the flip survives."""
        current = current.copy()
        for j in np.flatnonzero((current != x) & ~(np.isnan(current) & np.isnan(x))):
            grid = self._grid[j]
            lo, hi = sorted((x[j], current[j]))
            between = grid[(grid >= lo) & (grid <= hi)] if not np.isnan(x[j]) else current[j : j + 1]
            options = np.concatenate([x[j : j + 1], between]).astype(np.float32)
            js = np.full(options.size, j, dtype=np.intp)
            options = options[np.argsort(self._step_cost(x, js, options), kind="stable")]
            flips = self._flips(self._margins(self._trials(current, js, options)), direction)
            if flips.any():
                current[j] = options[int(np.argmax(flips))]
        return current

    def _verified(self, x: np.ndarray, current: np.ndarray, decision: bool) -> Counterfactual | None:
        scores = self._scores(np.stack([x, current]))
        new_decision = bool(scores[1] >= self.threshold)
        if new_decision == decision:
            return None
        same = (x == current) | (np.isnan(x) & np.isnan(current))
        js = np.flatnonzero(~same)
        return Counterfactual(
            changes=tuple(FeatureChange(self.feature_names[j], float(x[j]), float(current[j])) for j in js),
            original_score=float(scores[0]),
            score=float(scores[1]),
            decision=new_decision,
            distance=float(self._step_cost(x, js, current[js]).sum()),
        )

    # ------------------------------------------------------------------------------------ explain
    def explain(self, row: Any) -> Explanation:
        """SHAP, anchor and counterfactual of one row. Raises: ExplainerError for a bad row."""
        x = self._row(row)
        shap = self.shap(x[None])[0]
        counterfactual = self.counterfactual(x)
        note = ""
        if counterfactual is None:
            allowed = ", ".join(self.mutable) or "none"
            note = (
                f"no change of at most {self.options.max_changes} mutable feature(s) flips the decision "
                f"at threshold {self.threshold:g} (mutable: {allowed})"
            )
        return Explanation(
            score=shap.score,
            decision=shap.score >= self.threshold,
            threshold=self.threshold,
            shap=shap,
            anchor=self.anchor(x),
            counterfactual=counterfactual,
            counterfactual_note=note,
        )
