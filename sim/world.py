"""Synthetic payments world with a known ground truth, for the demo, tests, benchmarks and simulations.

The world is a population of card accounts (entities `ent-000042`). Every account has one feature
snapshot per day (`event_timestamp` = the day plus a fixed per-account offset under an hour;
`created_timestamp` equals it, as Feast must not hide a snapshot at its own time), 16
float features on realistic scales: skewed amounts, counts, ratios, a few missing values. Whether a
transaction turns out fraudulent (`label` 1) is drawn from `true_probability` of the account's
features *as of* the transaction time: the latest snapshot at or before it.

Ground truth (`true_logit`), ranked by importance (std of the feature's share of the logit):

- strong: `declined_txn_ratio_7d` (linear), `credit_utilization` (linear + a jump above 0.9:
  the threshold effect), `chargeback_count_90d` (log1p);
- medium: `txn_amount_mean_7d` (log scale) and `foreign_txn_ratio_30d`, mostly through their
  interaction (large foreign purchases are risky);
- weak: `account_age_days` (new accounts are riskier), `device_count_30d`,
  `days_since_last_login` (missing for 2% of snapshots; a missing value contributes nothing);
- pure noise, independent of every informative feature: the other eight (`NOISE_FEATURES`).

With `drifted=True` the strongest effect flips sign (fraudsters learned to avoid declines); the
term is centred, so the base rate stays similar while a golden model trained before drift decays.

Challenger feature sets (`FEATURE_SETS`): `golden` misses `chargeback_count_90d`, so a model on
`better` (all features) is truly better, one on `worse` (weak and noise features only) truly worse,
and a second model trained on `golden`'s set with the same data and seed is identical to the golden.

Everything is deterministic by seed and vectorised over entities and rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from rig.wire.records import Outcome

FEATURE_NAMES: tuple[str, ...] = (
    "txn_amount_mean_7d",  # USD, lognormal, heavy right tail
    "txn_count_7d",  # count
    "txn_count_30d",  # count, >= txn_count_7d
    "distinct_merchants_30d",  # count
    "declined_txn_ratio_7d",  # fraction [0, 1]
    "foreign_txn_ratio_30d",  # fraction [0, 1]
    "mobile_txn_ratio_7d",  # fraction [0, 1]
    "credit_utilization",  # balance / limit, >= 0, can exceed 1
    "credit_limit",  # USD, lognormal
    "chargeback_count_90d",  # rare count, mostly 0
    "account_age_days",  # grows by one a day
    "days_since_last_login",  # skewed count, 2% missing
    "device_count_30d",  # small count >= 1
    "income_estimate",  # USD per year, lognormal, 3% missing
    "support_tickets_30d",  # rare count
    "session_length_mean_s",  # seconds, lognormal
)
"""The 16 features of every snapshot, in the order models and the Feast feature view use."""

INFORMATIVE_FEATURES: tuple[str, ...] = (
    "declined_txn_ratio_7d",
    "credit_utilization",
    "chargeback_count_90d",
    "txn_amount_mean_7d",
    "foreign_txn_ratio_30d",
    "account_age_days",
    "device_count_30d",
    "days_since_last_login",
)
"""Features the true logit depends on, most important first (see `true_importance`)."""

STRONG_FEATURES: tuple[str, ...] = INFORMATIVE_FEATURES[:3]
"""The three strongest effects; an explainer should rank them on top."""

WEAK_FEATURES: tuple[str, ...] = INFORMATIVE_FEATURES[5:]
"""Informative but weak effects."""

NOISE_FEATURES: tuple[str, ...] = tuple(name for name in FEATURE_NAMES if name not in INFORMATIVE_FEATURES)
"""Features the true logit ignores; independent of every informative feature."""

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "golden": tuple(name for name in FEATURE_NAMES if name != "chargeback_count_90d"),
    "better": FEATURE_NAMES,
    "worse": ("account_age_days", "device_count_30d", "txn_count_7d", "session_length_mean_s"),
}
"""Feature sets for golden and challenger models. `golden` misses one strong feature, `better` has
all of them, `worse` only weak and noise ones. An identical challenger uses `golden`'s set."""

MISSING_RATES: dict[str, float] = {"days_since_last_login": 0.02, "income_estimate": 0.03}
"""Share of snapshots where a feature is missing (NaN)."""

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
"""Start of the world's first day when the caller does not choose one (keeps worlds reproducible)."""

_DAY = pd.Timedelta(days=1)

# Ground-truth coefficients. Centres make each term roughly zero-mean over the population.
_INTERCEPT = -2.3
_DECLINED_COEF = 10.0
_DECLINED_CENTRE = 0.09
_UTIL_COEF = 1.0
_UTIL_CENTRE = 0.577
_UTIL_THRESHOLD = 0.9
_UTIL_JUMP = 1.6
_UTIL_JUMP_RATE = 0.108
_CHARGEBACK_COEF = 1.6
_CHARGEBACK_CENTRE = 0.234
_AMOUNT_COEF = 0.28
_AMOUNT_CENTRE = 4.0
_FOREIGN_COEF = 2.0
_FOREIGN_CENTRE = 0.12
_INTERACTION_COEF = 2.6
_AGE_COEF = -0.16
_AGE_CENTRE = 5.54
_DEVICE_COEF = 0.115
_DEVICE_CENTRE = 2.4
_LOGIN_COEF = 0.12
_LOGIN_CENTRE = 1.14
_DRIFT_DECLINED_COEF = -10.0


@dataclass(frozen=True, eq=False)
class World:
    """One synthetic world: its parameters and the daily feature snapshots of every entity.

    `features` has columns `entity_id`, `event_timestamp`, `created_timestamp` (UTC) and
    `FEATURE_NAMES` (float64), one row per entity per day, sorted by `event_timestamp`.
    """

    seed: int
    n_entities: int
    days: int
    start: datetime
    features: pd.DataFrame
    entity_ids: np.ndarray
    popularity: np.ndarray
    """Request share of every entity (sums to 1, Zipf-like: a few hot accounts)."""

    @property
    def end(self) -> datetime:
        """Start of the day after the last one: later than every snapshot (offsets are under an hour)."""
        return (pd.Timestamp(self.start) + self.days * _DAY).to_pydatetime()

    def latest(self) -> pd.DataFrame:
        """The last snapshot of every entity, in `entity_ids` order (what the online store holds)."""
        last = self.features.drop_duplicates("entity_id", keep="last").set_index("entity_id")
        return last.loc[self.entity_ids].reset_index()


def format_entity_ids(index: np.ndarray | int, n_entities: int) -> np.ndarray:
    """String ids `ent-000042` for integer entity indices (width grows past a million entities)."""
    width = max(6, len(str(max(n_entities - 1, 0))))
    numbers = np.char.zfill(np.asarray(index).astype(str), width)
    return np.char.add("ent-", numbers).astype(object)


def _utc(moment: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent random streams per purpose, so one function's draws never shift another's."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def _ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) paths along axis 1 (days), standard deviation `sigma`."""
    noise = rng.standard_normal(shape) * sigma * np.sqrt(1.0 - phi**2)
    noise[:, 0] = rng.standard_normal(shape[0]) * sigma
    for day in range(1, shape[1]):  # a loop over days, vectorised over entities
        noise[:, day] += phi * noise[:, day - 1]
    return noise


def _beta_around(rng: np.random.Generator, mean: np.ndarray, concentration: float) -> np.ndarray:
    mean = np.clip(mean, 1e-4, 1 - 1e-4)
    return rng.beta(mean * concentration, (1 - mean) * concentration)


def _simulate_features(rng: np.random.Generator, n: int, days: int) -> dict[str, np.ndarray]:
    """Feature matrices of shape (n, days). Informative and noise features use separate draws."""
    shape = (n, days)
    col = (slice(None), None)  # broadcast a per-entity vector over days

    # Informative block.
    amount_log_mean = rng.normal(_AMOUNT_CENTRE, 0.8, n)
    amount = np.exp(amount_log_mean[col] + _ar1(rng, shape, 0.8, 0.35))
    declined_base = rng.beta(1.3, 13.0, n)
    declined = _beta_around(rng, np.broadcast_to(declined_base[col], shape), 60.0)
    foreign_base = rng.beta(0.7, 5.0, n)
    foreign = _beta_around(rng, np.broadcast_to(foreign_base[col], shape), 40.0)
    util_base = rng.beta(2.2, 2.0, n) * 1.1
    utilization = np.clip(util_base[col] + _ar1(rng, shape, 0.85, 0.08), 0.0, None)
    chargeback_start = rng.poisson(rng.gamma(0.6, 0.5, n))
    chargeback_steps = rng.choice([-1, 0, 1], size=shape, p=[0.02, 0.96, 0.02])
    chargeback_steps[:, 0] = 0
    chargeback = np.maximum(chargeback_start[col] + np.cumsum(chargeback_steps, axis=1), 0)
    age_start = np.floor(np.exp(rng.uniform(np.log(14), np.log(4000), n)))
    age = age_start[col] + np.arange(days)[None, :]
    device = 1 + rng.poisson(np.broadcast_to(rng.gamma(2.0, 0.7, n)[col], shape))
    login_p = np.clip(rng.beta(2.0, 5.0, n), 0.02, None)
    login = rng.geometric(np.broadcast_to(login_p[col], shape)) - 1

    # Noise block (correlated among themselves only).
    txn_rate = rng.gamma(2.0, 1.5, n)  # transactions per day
    txn_rate_daily = txn_rate[col] * np.exp(_ar1(rng, shape, 0.7, 0.3))
    count_7d = rng.poisson(7 * txn_rate_daily)
    count_30d = count_7d + rng.poisson(23 * txn_rate_daily)
    merchants = np.minimum(count_30d, 1 + rng.binomial(count_30d, 0.4))
    mobile = _beta_around(rng, np.broadcast_to(rng.beta(2.0, 2.0, n)[col], shape), 30.0)
    income_log = rng.normal(10.8, 0.55, n)
    income = np.round(np.exp(income_log[col] + rng.normal(0, 0.02, shape)), -2)
    limit = np.round(np.exp(income_log - 2.3 + rng.normal(0, 0.4, n)), -2)[col] * np.ones(shape)
    tickets = rng.poisson(np.broadcast_to(rng.gamma(0.5, 0.4, n)[col], shape))
    session = np.exp(rng.normal(5.0, 0.6, n)[col] + rng.normal(0, 0.25, shape))

    values = {
        "txn_amount_mean_7d": np.round(amount, 2),
        "txn_count_7d": count_7d,
        "txn_count_30d": count_30d,
        "distinct_merchants_30d": merchants,
        "declined_txn_ratio_7d": declined,
        "foreign_txn_ratio_30d": foreign,
        "mobile_txn_ratio_7d": mobile,
        "credit_utilization": utilization,
        "credit_limit": limit,
        "chargeback_count_90d": chargeback,
        "account_age_days": age,
        "days_since_last_login": login,
        "device_count_30d": device,
        "income_estimate": income,
        "support_tickets_30d": tickets,
        "session_length_mean_s": np.round(session, 1),
    }
    values = {name: np.asarray(values[name], dtype=np.float64) for name in FEATURE_NAMES}
    for name, rate in MISSING_RATES.items():
        values[name][rng.random(shape) < rate] = np.nan
    return values


def make_world(seed: int, n_entities: int, days: int, start: datetime = DEFAULT_START) -> World:
    """Build a world: `n_entities` accounts with one snapshot per day for `days` days.

    Args:
        seed: The same seed gives identical entities and snapshots.
        n_entities: Number of accounts (at least 1).
        days: Days of history (at least 1); day `d` snapshots fall in `[start + d, start + d + 1h)`.
        start: Start of the first day; naive datetimes are taken as UTC.

    Returns:
        The world, its `features` frame sorted by `event_timestamp`.

    Raises:
        ValueError: if `n_entities` or `days` is below 1.
    """
    if n_entities < 1 or days < 1:
        raise ValueError(f"a world needs n_entities >= 1 and days >= 1, got {n_entities} and {days}")
    rng = _rng(seed, 0)
    start_ts = _utc(start)
    values = _simulate_features(rng, n_entities, days)
    offsets = pd.to_timedelta(rng.integers(0, 3600, n_entities), unit="s")
    popularity = 1.0 / np.arange(1, n_entities + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())

    ids = format_entity_ids(np.arange(n_entities), n_entities)
    day_index = np.tile(np.arange(days), n_entities)  # entity-major rows: (entity, day)
    entity_index = np.repeat(np.arange(n_entities), days)
    event_ts = start_ts + pd.to_timedelta(day_index, unit="D") + offsets[entity_index]
    frame = pd.DataFrame({"entity_id": ids[entity_index], "event_timestamp": event_ts})
    # Available as soon as computed: Feast's historical retrieval ignores rows created after the
    # lookup time, so a later created_timestamp would make Feast disagree with `as_of_features`.
    frame["created_timestamp"] = frame["event_timestamp"]
    for name in FEATURE_NAMES:
        frame[name] = values[name].reshape(-1)
    frame = frame.sort_values(["event_timestamp", "entity_id"], kind="stable", ignore_index=True)
    return World(
        seed=seed,
        n_entities=n_entities,
        days=days,
        start=start_ts.to_pydatetime(),
        features=frame,
        entity_ids=ids,
        popularity=popularity,
    )


def _terms(features: pd.DataFrame, drifted: bool) -> dict[str, np.ndarray]:
    """Each additive term of the true logit, named after the feature(s) it belongs to."""

    def column(name: str) -> np.ndarray:
        return features[name].to_numpy(dtype=np.float64)

    declined = column("declined_txn_ratio_7d")
    util = column("credit_utilization")
    log_amount = np.log1p(column("txn_amount_mean_7d")) - _AMOUNT_CENTRE
    foreign = column("foreign_txn_ratio_30d")
    login_term = _LOGIN_COEF * (np.log1p(column("days_since_last_login")) - _LOGIN_CENTRE)
    declined_coef = _DRIFT_DECLINED_COEF if drifted else _DECLINED_COEF
    return {
        "declined_txn_ratio_7d": declined_coef * (declined - _DECLINED_CENTRE),
        "credit_utilization": _UTIL_COEF * (util - _UTIL_CENTRE)
        + _UTIL_JUMP * ((util > _UTIL_THRESHOLD) - _UTIL_JUMP_RATE),
        "chargeback_count_90d": _CHARGEBACK_COEF
        * (np.log1p(column("chargeback_count_90d")) - _CHARGEBACK_CENTRE),
        "txn_amount_mean_7d": _AMOUNT_COEF * log_amount,
        "foreign_txn_ratio_30d": _FOREIGN_COEF * (foreign - _FOREIGN_CENTRE),
        "interaction": _INTERACTION_COEF * foreign * log_amount,
        "account_age_days": _AGE_COEF * (np.log1p(column("account_age_days")) - _AGE_CENTRE),
        "device_count_30d": _DEVICE_COEF * (column("device_count_30d") - _DEVICE_CENTRE),
        "days_since_last_login": np.nan_to_num(login_term, nan=0.0),
    }


def true_logit(features: pd.DataFrame, drifted: bool = False) -> np.ndarray:
    """The ground-truth log-odds of fraud for each row of `features`.

    Args:
        features: Any frame with the `INFORMATIVE_FEATURES` columns (others are ignored).
        drifted: Use the relationship after drift (the declined-ratio effect flips sign).

    Returns:
        float64 array, one value per row. A missing `days_since_last_login` contributes nothing;
        other missing informative features give NaN.
    """
    return _INTERCEPT + np.sum(list(_terms(features, drifted).values()), axis=0)


def true_probability(features: pd.DataFrame, drifted: bool = False) -> np.ndarray:
    """The ground-truth probability of fraud, `sigmoid(true_logit(features, drifted))`."""
    return 1.0 / (1.0 + np.exp(-true_logit(features, drifted)))


def true_importance(features: pd.DataFrame, drifted: bool = False) -> pd.Series:
    """Importance of every feature: std of its share of the logit (interactions split evenly).

    Noise features get 0. Sorted descending; its order on a world's snapshots is `INFORMATIVE_FEATURES`.
    """
    terms = _terms(features, drifted)
    interaction = terms.pop("interaction") / 2.0
    terms["txn_amount_mean_7d"] = terms["txn_amount_mean_7d"] + interaction
    terms["foreign_txn_ratio_30d"] = terms["foreign_txn_ratio_30d"] + interaction
    importance = pd.Series(0.0, index=list(FEATURE_NAMES))
    for name, term in terms.items():
        importance[name] = float(np.nanstd(term))
    return importance.sort_values(ascending=False, kind="stable")


def as_of_features(
    world: World,
    entity_ids: Sequence[str] | np.ndarray | pd.Series,
    times: Sequence[datetime] | np.ndarray | pd.Series | pd.DatetimeIndex,
) -> pd.DataFrame:
    """Point-in-time lookup: each (entity, time)'s latest snapshot at or before `time`.

    Args:
        world: The world whose snapshots to read.
        entity_ids: Entity id per row.
        times: Lookup time per row (tz-aware, or naive taken as UTC).

    Raises:
        ValueError: if `entity_ids` and `times` differ in length.

    Returns:
        DataFrame in input order with `entity_id`, `event_time` (the lookup time),
        `snapshot_timestamp` (NaT when the entity has no snapshot yet) and `FEATURE_NAMES`
        (NaN when there is no snapshot or the entity is unknown).
    """
    lookup_times = pd.to_datetime(pd.Series(times), utc=True).dt.as_unit("ns").reset_index(drop=True)
    ids = pd.Series(np.asarray(entity_ids, dtype=object))
    if len(ids) != len(lookup_times):
        raise ValueError(f"got {len(ids)} entity ids but {len(lookup_times)} times")
    left = pd.DataFrame({"entity_id": ids, "event_time": lookup_times, "_row": np.arange(len(ids))})
    merged = pd.merge_asof(
        left.sort_values("event_time", kind="stable"),
        world.features,  # sorted by event_timestamp
        left_on="event_time",
        right_on="event_timestamp",
        by="entity_id",
        direction="backward",
        allow_exact_matches=True,
    )
    merged = merged.sort_values("_row").reset_index(drop=True)
    merged = merged.rename(columns={"event_timestamp": "snapshot_timestamp"})
    return merged[["entity_id", "event_time", "snapshot_timestamp", *FEATURE_NAMES]]


def _drift_mask(times: pd.Series, drift_at: datetime | None) -> np.ndarray:
    if drift_at is None:
        return np.zeros(len(times), dtype=bool)
    return (times >= _utc(drift_at)).to_numpy()


def _draw_labels(
    rng: np.random.Generator, features: pd.DataFrame, drifted: np.ndarray, what: str
) -> np.ndarray:
    missing = features["snapshot_timestamp"].isna().to_numpy()
    if missing.any():
        first = features.loc[missing, ["entity_id", "event_time"]].iloc[0].tolist()
        raise ValueError(
            f"{missing.sum()} {what} have no feature snapshot at or before their time "
            f"(first: {first[0]} at {first[1]}); the world starts at {features['snapshot_timestamp'].min()}"
        )
    probability = np.where(drifted, true_probability(features, True), true_probability(features, False))
    return (rng.random(len(features)) < probability).astype(np.int64)


def labelled_events(world: World, n_events: int, seed: int, drift_at: datetime | None = None) -> pd.DataFrame:
    """Labelled training events for Feast historical retrieval.

    Events pick entities uniformly and times uniformly between each entity's first snapshot and
    `world.end`; the label is drawn from the true probability of the features as of that time.

    Args:
        world: The world.
        n_events: Number of events.
        seed: Seed of the draws (independent of the world's seed).
        drift_at: Events at or after this time use the drifted relationship.

    Returns:
        DataFrame `entity_id`, `event_timestamp` (UTC), `label` (int64 0/1), sorted by time.
    """
    rng = _rng(seed, 1)
    entity_index = rng.integers(0, world.n_entities, n_events)
    first = world.features.drop_duplicates("entity_id").set_index("entity_id")["event_timestamp"]
    earliest = first.reindex(world.entity_ids[entity_index]).reset_index(drop=True)
    span_s = (pd.Timestamp(world.end) - earliest).dt.total_seconds().to_numpy()
    times = (earliest + pd.to_timedelta(rng.random(n_events) * span_s, unit="s")).dt.floor("us")
    features = as_of_features(world, world.entity_ids[entity_index], times)
    labels = _draw_labels(rng, features, _drift_mask(features["event_time"], drift_at), "events")
    events = pd.DataFrame(
        {"entity_id": features["entity_id"], "event_timestamp": features["event_time"], "label": labels}
    )
    return events.sort_values("event_timestamp", kind="stable", ignore_index=True)


def _request_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Deterministic random UUID4 strings, vectorised."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hex_chars = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype=np.uint8).reshape(n, 32)
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    groups = [hex_chars[:, lo:hi] for lo, hi in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))]
    joined = np.hstack([groups[0], dash, groups[1], dash, groups[2], dash, groups[3], dash, groups[4]])
    return np.ascontiguousarray(joined).view("S36").ravel().astype(str).astype(object)


def make_requests(
    world: World, n: int, seed: int, start: datetime | None = None, rate_per_s: float = 100.0
) -> pd.DataFrame:
    """A stream of prediction requests: Poisson arrivals, Zipf-like entity popularity.

    Args:
        world: The world whose entities are asked about (hot entities follow `world.popularity`).
        n: Number of requests.
        seed: Seed of the draws.
        start: Time of the stream's start; defaults to `world.end`.
        rate_per_s: Mean arrival rate per second (> 0).

    Returns:
        DataFrame `request_id` (unique UUID4 strings), `entity_id`, `event_time` (UTC, increasing).

    Raises:
        ValueError: if `rate_per_s` is not positive.
    """
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
    rng = _rng(seed, 2)
    start_ts = _utc(world.end if start is None else start)
    gaps = rng.exponential(1.0 / rate_per_s, n)
    times = start_ts + pd.to_timedelta(np.cumsum(gaps), unit="s").floor("us")
    entity_index = rng.choice(world.n_entities, size=n, p=world.popularity)
    return pd.DataFrame(
        {
            "request_id": _request_ids(rng, n),
            "entity_id": world.entity_ids[entity_index],
            "event_time": pd.Series(times),
        }
    )


def label_delays(
    rng: np.random.Generator,
    labels: np.ndarray,
    median_s: float = 60.0,
    sigma: float = 0.75,
    positive_factor: float = 1.0,
) -> np.ndarray:
    """Delays until each label is known, in seconds: lognormal, slower for positives.

    A negative's delay has median `median_s`, a positive's `median_s * positive_factor` (fraud is
    confirmed later than a clean payment is), both with lognormal shape `sigma`. With a factor other
    than 1 the outcomes known early over-represent one label: what the promoter's matured cohorts
    are for (`rig.feedback.delays`).

    Args:
        rng: The generator to draw from (one standard normal per label).
        labels: 0/1 per outcome.
        median_s: Median delay of a negative, seconds (> 0).
        sigma: Lognormal shape (0 makes every delay its label's median).
        positive_factor: How many times longer a positive's median delay is (> 0).

    Raises:
        ValueError: if a parameter is out of range.
    """
    if median_s <= 0 or sigma < 0 or positive_factor <= 0:
        raise ValueError(
            "need median_s > 0, sigma >= 0 and positive_factor > 0, got "
            f"{median_s}, {sigma}, {positive_factor}"
        )
    y = np.asarray(labels)
    medians = np.where(y == 1, median_s * positive_factor, median_s)
    return np.exp(np.log(medians) + sigma * rng.standard_normal(y.shape))


def make_outcomes(
    world: World,
    requests: pd.DataFrame,
    seed: int,
    delay_median_s: float = 60.0,
    drift_at: datetime | None = None,
    delay_sigma: float = 0.75,
    positive_delay_factor: float = 1.0,
) -> pd.DataFrame:
    """Delayed ground-truth outcomes of requests.

    The label is drawn from the true probability of the entity's features as of the request's
    time (drifted for requests at or after `drift_at`); it becomes known after a lognormal delay
    that may depend on the label (`label_delays`).

    Args:
        world: The world the requests came from.
        requests: Frame with `request_id`, `entity_id`, `event_time`.
        seed: Seed of the draws.
        delay_median_s: Median delay between request and outcome of a negative, in seconds (> 0).
        drift_at: Requests at or after this time use the drifted relationship.
        delay_sigma: Lognormal shape of the delay (0 makes every delay its label's median).
        positive_delay_factor: A positive's median delay is this many times a negative's (1: the
            delay does not depend on the label).

    Returns:
        DataFrame `request_id`, `entity_id`, `label` (int64 0/1), `event_time` (when the outcome
        is known, UTC), sorted by `event_time`.

    Raises:
        ValueError: if a request is earlier than its entity's first snapshot, or the delay is invalid.
    """
    if delay_median_s <= 0 or delay_sigma < 0 or positive_delay_factor <= 0:
        raise ValueError(
            "need delay_median_s > 0, delay_sigma >= 0 and positive_delay_factor > 0, got "
            f"{delay_median_s}, {delay_sigma}, {positive_delay_factor}"
        )
    rng = _rng(seed, 3)
    features = as_of_features(world, requests["entity_id"], requests["event_time"])
    labels = _draw_labels(rng, features, _drift_mask(features["event_time"], drift_at), "requests")
    delays = label_delays(rng, labels, delay_median_s, delay_sigma, positive_delay_factor)
    outcomes = pd.DataFrame(
        {
            "request_id": requests["request_id"].to_numpy(),
            "entity_id": features["entity_id"].to_numpy(),
            "label": labels,
            "event_time": features["event_time"] + pd.to_timedelta(delays, unit="s").floor("us"),
        }
    )
    return outcomes.sort_values("event_time", kind="stable", ignore_index=True)


def outcome_records(outcomes: pd.DataFrame) -> list[Outcome]:
    """`make_outcomes`' frame as Outcome records (event time in epoch ms), in the frame's order."""
    known_ms = outcomes["event_time"].dt.as_unit("ms").astype("int64")
    return [
        Outcome(request_id=request_id, entity_id=entity_id, label=int(label), event_time=int(at))
        for request_id, entity_id, label, at in zip(
            outcomes["request_id"], outcomes["entity_id"], outcomes["label"], known_ms, strict=True
        )
    ]


OFFLINE_STORE_FILE = "entity_features.parquet"
"""File name of the snapshots Parquet inside the Feast data folder."""


def write_offline_store(world: World, data_dir: Path) -> Path:
    """Write the world's snapshots as the Parquet file the Feast FileSource reads.

    Args:
        world: The world.
        data_dir: The Feast data folder (created when missing).

    Returns:
        Path of the written file (`data_dir / OFFLINE_STORE_FILE`).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / OFFLINE_STORE_FILE
    temporary = path.with_suffix(".parquet.tmp")
    frame = world.features.copy()
    for column in ("event_timestamp", "created_timestamp"):
        frame[column] = frame[column].dt.as_unit("us")
    frame.to_parquet(temporary, index=False)
    temporary.replace(path)
    return path
