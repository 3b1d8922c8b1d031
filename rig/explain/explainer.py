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
  TF 2.21 (`keras.backend` has no `get_session`): not used. The Anchors-style search (`rig.explain.anchors`)
  and the counterfactual (`rig.explain.counterfactual`) are implemented in numpy, vectorised (one predict call
  per search step).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rig.errors import ExplainerError
from rig.explain.anchors import Anchor, AnchorSearch
from rig.explain.counterfactual import Counterfactual, CounterfactualSearch
from rig.explain.records import Record
from rig.models.dense import DenseScorer

if TYPE_CHECKING:
    import xgboost

KEY_FORMAT = b"rig-explanation/1"
"""Part of every explanation key: changing the key or explanation format changes the whole key space."""

_MIN_REFERENCE_ROWS = 10


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
class FeatureContribution(Record):
    """One feature's signed SHAP contribution (margin units) and the row's value of it."""

    feature: str
    value: float
    contribution: float


@dataclass(frozen=True, slots=True)
class ShapExplanation(Record):
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
        data = Record.to_dict(self)
        data["contributions"] = dict(zip(data.pop("features"), data["contributions"], strict=True))
        return data


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
        self._scorer = DenseScorer(booster)  # the backbone's call: XGBoost's C call without its wrapper
        self.feature_names = names
        self.threshold = float(threshold)
        allowed = set(names if mutable is None else mutable)
        self.mutable = tuple(name for name in names if name in allowed)
        self.seed = seed
        self.options = opts = options or ExplainerOptions()
        reference = np.ascontiguousarray(ref)
        margin_threshold = math.log(threshold / (1 - threshold))
        sorted_values = [np.sort(col[~np.isnan(col)]) for col in reference.T]
        self._anchors = AnchorSearch(
            self._margins,
            margin_threshold,
            names,
            reference,
            sorted_values,
            [self._quantiles(v, opts.bin_quantiles) for v in sorted_values],
            seed=seed,
            precision_target=opts.precision_target,
            max_anchor_size=opts.max_anchor_size,
            beam_width=opts.beam_width,
            anchor_batch=opts.anchor_batch,
            anchor_confirm=opts.anchor_confirm,
            confidence=opts.confidence,
        )
        grid = np.linspace(0.01, 0.99, opts.counterfactual_grid)
        self._counterfactuals = CounterfactualSearch(
            self._margins,
            self._scores,
            self.threshold,
            margin_threshold,
            names,
            [j for j, name in enumerate(names) if name in allowed],
            [self._quantiles(v, grid) for v in sorted_values],
            np.array([self._spread(v) for v in sorted_values]),
            max_changes=opts.max_changes,
            counterfactual_beam=opts.counterfactual_beam,
        )

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
        return np.asarray(self._scorer.inplace_predict(x, predict_type="margin"), dtype=np.float64)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._scorer.inplace_predict(x), dtype=np.float64)

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

    # ------------------------------------------------------------------- anchor and counterfactual
    def anchor_precision(self, row: Any, anchor: Anchor, n_samples: int = 2000, seed: int = 1) -> float:
        """Re-estimate an anchor's precision for `row` on `n_samples` perturbations drawn with `seed`."""
        return self._anchors.precision(self._row(row), anchor, n_samples, seed)

    def anchor(self, row: Any) -> Anchor:
        """The anchor of `row` (see the module docstring). Raises: ExplainerError for a bad row."""
        return self._anchors.find(self._row(row))

    def counterfactual(self, row: Any) -> Counterfactual | None:
        """The least distant found change of fewest mutable features that flips the decision, or None.

        Raises:
            ExplainerError: a bad row.
        """
        return self._counterfactuals.find(self._row(row))

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
