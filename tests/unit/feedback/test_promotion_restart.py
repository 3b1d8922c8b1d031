"""A promoter that stops and goes on from its saved state decides exactly what one that never stopped
decides: same decisions (time, action, evidence, checks), same snapshot, so the same error rate."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from msgspec.structs import replace

from rig.errors import PromoterError
from rig.feedback.delays import WindowConfig
from rig.feedback.guardrails import GuardrailConfig
from rig.feedback.promotion import STATE_FORMAT, PromotionLoop
from rig.feedback.sequential import PromoterConfig
from rig.routing.table import RoutingTable
from rig.wire.records import Decision, JoinedOutcome
from tests.unit.feedback.test_promotion import CONFIG, SHADOW, loop_of, rows, serving

LEARNED = WindowConfig()
"""The label window learned from the delays: rows wait in the backlog until it is known."""


def new_loop(config: PromoterConfig = CONFIG) -> PromotionLoop:
    return PromotionLoop(config, GuardrailConfig(), LEARNED)


def evidence(decisions: list[Decision]) -> list[Decision]:
    """Decisions without their random id: what was decided, when, on what evidence and checks."""
    return [replace(decision, decision_id="") for decision in decisions]


def batches_of(stream: list[JoinedOutcome], size: int) -> list[list[JoinedOutcome]]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def run(
    batches: list[list[JoinedOutcome]], table: RoutingTable, restarts: dict[int, int] | None = None
) -> tuple[dict[int, list[Decision]], dict[str, object]]:
    """Feed the batches in order, deciding after each (at time = batch index) and saving the state.
    `restarts[i] = j`: before batch i the promoter stops; a new one restores the state saved after
    batch j (j < i) and reads on from batch j + 1, so batches j+1 .. i-1 are folded again, as after a
    crash between two saves. Returns the decisions by batch and the final snapshot."""
    pending = dict(restarts or {})
    decided: dict[int, list[Decision]] = {}
    saved: dict[int, bytes] = {}
    loop, i = new_loop(), 0
    while i < len(batches):
        if i in pending:
            j = pending.pop(i)
            loop, i = new_loop(), j + 1
            loop.restore(saved[j])
        loop.observe(batches[i], table)
        if i == len(batches) // 2:
            loop.observe_serving([serving("m.2", 1_000, 1.0)])
            loop.observe_serving([serving("m.2", 1_000, 1.0)])  # read again: folded once
        now = evidence(loop.decide(i, table))
        assert decided.setdefault(i, now) == now, f"batch {i} folded again decided something else"
        saved[i] = loop.state()
        i += 1
    return decided, loop.snapshot(table)


def test_a_loop_restored_from_half_a_stream_decides_and_stands_exactly_as_one_that_never_stopped() -> None:
    batches = batches_of(rows("m.1", "m.2", 1_000, challenger_better=True), 100)
    whole, first = new_loop(), new_loop()
    whole_decisions, rest_decisions = [], []
    for i, batch in enumerate(batches[:10]):
        whole.observe(batch, SHADOW)
        first.observe(batch, SHADOW)
        whole_decisions += evidence(whole.decide(i, SHADOW))
        first.decide(i, SHADOW)  # deciding is part of the state: each finding is reported once
    restored = new_loop()
    restored.restore(first.state())
    assert restored.snapshot(SHADOW) == whole.snapshot(SHADOW)
    for i, batch in enumerate(batches[10:], start=10):
        whole.observe(batch, SHADOW)
        restored.observe(batch, SHADOW)
        whole_decisions += evidence(whole.decide(i, SHADOW))
        rest_decisions += evidence(restored.decide(i, SHADOW))

    assert [d.action for d in whole_decisions if d.decided_at >= 10] == ["promote"]
    assert rest_decisions == [d for d in whole_decisions if d.decided_at >= 10]
    assert restored.snapshot(SHADOW) == whole.snapshot(SHADOW)
    assert restored.observe(batches[-1], SHADOW) == [], "the restored seen keys drop a redelivery"


def a_a_rows(n: int, seed: int) -> list[JoinedOutcome]:
    """n requests whose golden and challenger scores come from one distribution (an A/A test)."""
    rng = np.random.default_rng(seed)
    out = rows("m.1", "m.2", n, challenger_better=True, seed=seed)
    for i in range(n):
        golden, challenger = out[2 * i], out[2 * i + 1]
        g, c = np.clip(0.5 + 0.25 * (2 * golden.label - 1) + rng.normal(0, 0.15, 2), 0.01, 0.99)
        out[2 * i] = replace(golden, score=float(g))
        out[2 * i + 1] = replace(challenger, score=float(c), golden_score=float(g))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_k_restarts_with_rows_folded_again_leave_every_decision_and_so_the_error_rate_unchanged(
    seed: int,
) -> None:
    """Seeds 0-2: a better challenger (it is promoted: power); 3-5: an A/A test (it is not: no false
    promotion). Four restarts, each going back one to three batches before the crash."""
    better = seed < 3
    stream = rows("m.1", "m.2", 1_800, True, seed=seed) if better else a_a_rows(1_800, seed=seed)
    batches = batches_of(stream, 150)
    restarts = {4: 2, 10: 7, 15: 12, 20: 19}  # the one at 10 folds the batch that promotes again

    never, never_snapshot = run(batches, SHADOW)
    restarted, restarted_snapshot = run(batches, SHADOW, restarts)

    assert restarted == never and restarted_snapshot == never_snapshot
    actions = [d.action for ds in never.values() for d in ds]
    assert ("promote" in actions) == better


def test_a_state_of_other_settings_another_format_or_unreadable_is_refused() -> None:
    loop = new_loop()
    loop.observe(rows("m.1", "m.2", 50, challenger_better=True), SHADOW)
    state = loop.state()
    stricter = new_loop(PromoterConfig(alpha=0.01, min_samples=200, min_effect=0.002, mode="auto"))
    with pytest.raises(PromoterError, match="other settings \\(config\\)"):
        stricter.restore(state)
    _, fields = pickle.loads(state)
    with pytest.raises(PromoterError, match=f"format {STATE_FORMAT + 98}"):
        new_loop().restore(pickle.dumps((STATE_FORMAT + 98, fields)))
    with pytest.raises(PromoterError, match="unreadable"):
        new_loop().restore(state[: len(state) // 2])
    assert stricter.snapshot(SHADOW) == new_loop().snapshot(SHADOW), "a refused state changes nothing"


def test_a_fresh_start_instead_of_a_restore_starts_the_tests_over() -> None:
    """What a restart did before states were saved: the evidence gathered so far is gone."""
    batches = batches_of(rows("m.1", "m.2", 600, challenger_better=True), 100)
    kept, fresh = loop_of(), loop_of()  # a known label window: every row but the last matures
    for batch in batches[:3]:
        kept.observe(batch, SHADOW)
    kept_after = loop_of()
    kept_after.restore(kept.state())
    for batch in batches[3:]:
        kept_after.observe(batch, SHADOW)
        fresh.observe(batch, SHADOW)
    assert kept_after.promoter is not None and fresh.promoter is not None
    n_kept, n_fresh = kept_after.promoter.pairs["m.2"].n, fresh.promoter.pairs["m.2"].n
    assert (n_kept, n_fresh) == (599, 449), "the 150 requests of the first 3 batches are lost to it"
