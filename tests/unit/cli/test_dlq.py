"""rig.cli.dlq and rig.wire.dead_letters, their pure parts: choosing dead letters, what to replay, and
how they are reported."""

from __future__ import annotations

import msgspec
import pytest
import typer

from rig.cli.dlq import ReplayPlan, selection, summary_lines
from rig.wire.codec import ErrorType
from rig.wire.dead_letters import (
    OffsetRange,
    Selection,
    StoredLetter,
    Unreadable,
    parse_offset_range,
    preview,
    summarize,
    summary_json,
)
from rig.wire.intake import MAX_ORIGINAL_BYTES, Source, dead_letter
from rig.wire.records import DeadLetter

REQUESTS = "rig.requests"


def letter(
    offset: int,
    reason: str = "invalid JSON: Expecting value",
    error_type: str = ErrorType.MALFORMED,
    *,
    partition: int = 0,
    topic: str = REQUESTS,
    value: bytes = b"{bad",
    request_id: str | None = None,
) -> DeadLetter:
    source = Source(topic=topic, partition=partition, offset=offset, key=b"ent-1", value=value)
    return dead_letter(source, reason, error_type, request_id)


def stored(*letters: DeadLetter) -> list[StoredLetter]:
    return [StoredLetter(0, i, one) for i, one in enumerate(letters)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("57", OffsetRange(None, 57, 57)),
        ("100-200", OffsetRange(None, 100, 200)),
        ("2:100-200", OffsetRange(2, 100, 200)),
        (" 3:7 ", OffsetRange(3, 7, 7)),
    ],
)
def test_an_offset_range_reads_partition_first_and_last(text: str, expected: OffsetRange) -> None:
    assert parse_offset_range(text) == expected


@pytest.mark.parametrize("text", ["", "a-b", "1:", "-5", "200-100", "1:2:3"])
def test_a_malformed_or_backwards_offset_range_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="offset range"):
        parse_offset_range(text)


def test_an_offset_range_covers_its_partition_only_when_it_names_one() -> None:
    assert OffsetRange(None, 5, 9).covers(3, 5) and OffsetRange(None, 5, 9).covers(0, 9)
    assert OffsetRange(2, 5, 9).covers(2, 7) and not OffsetRange(2, 5, 9).covers(1, 7)
    assert not OffsetRange(None, 5, 9).covers(0, 10)


def test_a_selection_needs_every_criterion_and_any_value_of_each() -> None:
    bad_json = letter(10, "invalid JSON: Expecting value", request_id="r-1")
    nan = letter(11, "non-finite request feature(s) ['x'] (NaN or infinity)", ErrorType.INVALID_VALUE)
    chosen = Selection(reasons=("INVALID json", "nan"), error_types=frozenset({"malformed"}))

    assert chosen.matches(bad_json) and not chosen.matches(nan)
    assert Selection(reasons=("json", "nan")).matches(nan)
    assert Selection(offsets=(OffsetRange(0, 11, 20),)).matches(nan)
    assert not Selection(offsets=(OffsetRange(1, 0, 20),)).matches(nan)
    assert Selection(request_ids=frozenset({"r-1"})).matches(bad_json)
    assert not Selection(request_ids=frozenset({"r-1"})).matches(nan)
    assert Selection().is_everything() and Selection().matches(nan)


def test_the_options_become_a_selection_and_unknown_error_types_or_ranges_are_refused() -> None:
    assert selection(["json"], ["malformed"], ["1:5-6"], ["r-1"]) == Selection(
        ("json",), frozenset({"malformed"}), (OffsetRange(1, 5, 6),), frozenset({"r-1"})
    )
    assert selection(None, None, None, None).is_everything()
    with pytest.raises(typer.BadParameter, match="unknown error type"):
        selection(None, ["malformd"], None, None)
    with pytest.raises(typer.BadParameter, match="offset range"):
        selection(None, None, ["x"], None)


def test_a_summary_counts_the_chosen_letters_by_type_and_reason_and_keeps_the_latest() -> None:
    records: list[StoredLetter | Unreadable] = [
        *stored(letter(1), letter(2), letter(3, "unknown entity 'e'", ErrorType.UNKNOWN_ENTITY), letter(4)),
        Unreadable(1, 0, "unknown message format"),
    ]

    summary = summarize("rig.dlq", records, Selection(), limit=2)

    assert (summary.read, summary.selected, len(summary.unreadable)) == (5, 4, 1)
    assert summary.by_error_type == {"malformed": 3, "unknown_entity": 1}
    assert summary.by_reason == {"invalid JSON: Expecting value": 3, "unknown entity 'e'": 1}
    assert [record.letter.offset for record in summary.newest_first()] == [4, 3]
    filtered = summarize("rig.dlq", records, Selection(error_types=frozenset({"unknown_entity"})), limit=5)
    assert filtered.selected == 1 and filtered.by_error_type == {"unknown_entity": 1}


def test_the_examples_are_the_newest_received_whatever_order_the_partitions_were_read_in() -> None:
    received = [300, 100, 400, 200]  # two dlq partitions read one after the other
    records = stored(*(msgspec.structs.replace(letter(i), received_at=at) for i, at in enumerate(received)))

    summary = summarize("rig.dlq", records, Selection(), limit=2)

    assert [record.letter.received_at for record in summary.newest_first()] == [400, 300]
    assert summarize("rig.dlq", records, Selection(), limit=0).newest_first() == []


def test_the_text_report_shows_counts_reasons_and_the_newest_example_first_with_its_source() -> None:
    records = stored(
        letter(7, partition=2),
        letter(8, "unknown entity 'e'", ErrorType.UNKNOWN_ENTITY, value=b"\xc3\x01xyz"),
    )

    lines = summary_lines(summarize("rig.dlq", records, Selection(), limit=5))
    text = "\n".join(lines)

    assert lines[0] == "rig.dlq: 2 of 2 record(s) selected"
    assert "        1  malformed" in text and "        1  unknown entity 'e'" in text
    assert text.index("rig.requests[0]@8") < text.index("rig.requests[2]@7")
    assert "original (5 bytes): \\xc3\\x01xyz" in text


def test_the_text_report_of_an_empty_selection_is_one_line() -> None:
    assert summary_lines(summarize("rig.dlq", stored(letter(1)), Selection(reasons=("nope",)), 5)) == [
        "rig.dlq: 0 of 1 record(s) selected"
    ]


def test_the_json_report_holds_every_count_and_the_examples_newest_first() -> None:
    records = stored(letter(7, request_id="r-7"), letter(8, "other", value=b"x" * 100))

    document = summary_json(summarize("rig.dlq", records, Selection(), limit=5))

    assert document["selected"] == 2 and document["by_reason"] == {
        "invalid JSON: Expecting value": 1,
        "other": 1,
    }
    newest, oldest = document["latest"]
    assert (newest["offset"], newest["original_bytes"], newest["original_preview"]) == (
        8,
        100,
        "x" * 80 + "…",
    )
    assert (oldest["request_id"], oldest["source_topic"], oldest["key"]) == ("r-7", REQUESTS, "ent-1")


def test_a_preview_escapes_what_is_not_printable_and_marks_a_cut() -> None:
    assert preview(b'{"a": 1}') == '{"a": 1}'
    assert preview(b"\x00\xffab\n", width=3) == "\\x00\\xffa…"


def test_a_replay_takes_chosen_whole_letters_of_its_topic_once_and_counts_the_rest() -> None:
    plan = ReplayPlan(Selection(error_types=frozenset({"malformed"})), REQUESTS)
    huge = letter(5, value=b"\x01" * (MAX_ORIGINAL_BYTES + 1))
    records = stored(
        letter(1),
        letter(1),  # the same message dead-lettered twice (a worker crashed before its commit)
        letter(2, topic="rig.outcomes"),
        huge,
        letter(3, "unknown entity 'e'", ErrorType.UNKNOWN_ENTITY),
        letter(4),
    )

    everything: list[StoredLetter | Unreadable] = [*records, Unreadable(0, 9, "?")]
    taken = [one for record in everything if (one := plan.take(record))]

    assert [one.offset for one in taken] == [1, 4]
    assert (plan.taken, plan.repeats, plan.other_topic, plan.truncated) == (2, 1, 1, 1)
    assert plan.left_out() == " (left out: 1 from other topics, 1 truncated, 1 repeated)"
    assert ReplayPlan(Selection(), REQUESTS).left_out() == ""
