"""`rig dlq`: what the dead-letter topic holds, and sending chosen dead letters back after a fix.

Both commands read the whole dlq topic, from its beginning to its end when they start, with a
throwaway consumer that never commits, and choose letters with the same options: `rig dlq show
--reason X` lists what `rig dlq replay --reason X` would send. Kafka and the codecs are imported
inside the commands, so `rig --help` stays quick.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer

from rig.config import RigSettings
from rig.errors import RigError, TopicError
from rig.wire.dead_letters import (
    Selection,
    StoredLetter,
    Summary,
    Unreadable,
    parse_offset_range,
    preview,
    read_dead_letters,
    summarize,
    summary_json,
    utc_text,
)

if TYPE_CHECKING:
    from rig.wire.records import DeadLetter

dlq_app = typer.Typer(
    help="The dead-letter topic: what failed and why; replay after a fix.", no_args_is_help=True
)

# `rig.wire.intake.dead_letter` says so in the reason when it kept only the start of a message or
# key: such an original is not the message that was sent, so it is never replayed.
_TRUNCATED_NOTE = "(dead letter truncated:"

ReasonOption = Annotated[
    list[str] | None, typer.Option("--reason", help="Reason contains this text, in any case (repeatable).")
]
ErrorTypeOption = Annotated[
    list[str] | None, typer.Option("--error-type", help="Error type, e.g. malformed (repeatable).")
]
OffsetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--offset", help="Source offsets [PARTITION:]FIRST[-LAST], e.g. 2:100-200 or 57 (repeatable)."
    ),
]
RequestIdOption = Annotated[list[str] | None, typer.Option("--request-id", help="Request id (repeatable).")]


def selection(
    reasons: list[str] | None,
    error_types: list[str] | None,
    offsets: list[str] | None,
    request_ids: list[str] | None,
) -> Selection:
    """The selection the command-line options describe.

    Raises:
        typer.BadParameter: an unknown error type or a malformed offset range.
    """
    from rig.wire.codec import ErrorType

    known = {str(e) for e in ErrorType}
    unknown = sorted(set(error_types or ()) - known)
    if unknown:
        raise typer.BadParameter(
            f"unknown error type(s) {unknown}; known: {sorted(known)}", param_hint="--error-type"
        )
    try:
        ranges = tuple(parse_offset_range(text) for text in offsets or ())
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--offset") from error
    return Selection(tuple(reasons or ()), frozenset(error_types or ()), ranges, frozenset(request_ids or ()))


def one_line(text: str, width: int = 160) -> str:
    """`text` on one line (runs of whitespace as one space), cut to `width` characters with `…`."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def letter_line(letter: DeadLetter) -> str:
    """Where a dead letter's message came from, its error type, request id and key, on one line."""
    key = "-" if letter.key is None else preview(letter.key, 40)
    return (
        f"{utc_text(letter.received_at)} {letter.source_topic}[{letter.partition}]@{letter.offset} "
        f"{letter.error_type} request_id={letter.request_id or '-'} key={key}"
    )


def summary_lines(summary: Summary, top_reasons: int = 10) -> list[str]:
    """The summary as text: counts by error type, the most common reasons, the latest examples."""
    unreadable = f"; {len(summary.unreadable)} unreadable" if summary.unreadable else ""
    lines = [f"{summary.topic}: {summary.selected} of {summary.read} record(s) selected{unreadable}"]
    lines += [
        f"  unreadable [{u.partition}]@{u.offset}: {one_line(u.reason)}" for u in summary.unreadable[-3:]
    ]
    if not summary.selected:
        return lines
    lines.append("by error type:")
    lines += [f"  {n:>7}  {error_type}" for error_type, n in summary.by_error_type.most_common()]
    lines.append("by reason:")
    lines += [f"  {n:>7}  {one_line(reason)}" for reason, n in summary.by_reason.most_common(top_reasons)]
    if len(summary.by_reason) > top_reasons:
        lines.append(f"  ({len(summary.by_reason) - top_reasons} other reason(s); --json lists them all)")
    newest = summary.newest_first()
    lines.append(f"latest {len(newest)}, newest first:")
    for record in newest:
        letter = record.letter
        lines += [
            f"  {letter_line(letter)}",
            f"      reason: {one_line(letter.reason)}",
            f"      original ({len(letter.original)} bytes): {preview(letter.original)}",
        ]
    return lines


@dataclass
class ReplayPlan:
    """Which chosen dead letters go back to `source_topic`: only its own, each message once (a worker
    that crashed may have dead-lettered it twice), and only whole originals. Counts what it left out."""

    chosen: Selection
    source_topic: str
    taken: int = 0
    other_topic: int = 0
    truncated: int = 0
    repeats: int = 0
    _seen: set[tuple[int, int]] = field(default_factory=set, repr=False)

    def take(self, record: StoredLetter | Unreadable) -> DeadLetter | None:
        """The dead letter when it is to be replayed, else None."""
        if isinstance(record, Unreadable) or not self.chosen.matches(record.letter):
            return None
        letter = record.letter
        if letter.source_topic != self.source_topic:
            self.other_topic += 1
            return None
        if _TRUNCATED_NOTE in letter.reason:
            self.truncated += 1
            return None
        if (letter.partition, letter.offset) in self._seen:
            self.repeats += 1
            return None
        self._seen.add((letter.partition, letter.offset))
        self.taken += 1
        return letter

    def left_out(self) -> str:
        """What was chosen but not taken, in words (empty when nothing was)."""
        parts = [
            f"{self.other_topic} from other topics" if self.other_topic else "",
            f"{self.truncated} truncated" if self.truncated else "",
            f"{self.repeats} repeated" if self.repeats else "",
        ]
        text = ", ".join(part for part in parts if part)
        return f" (left out: {text})" if text else ""


def send_originals(
    config: RigSettings, topic: str, letters: Iterable[DeadLetter], timeout_s: float = 60
) -> int:
    """Produce each dead letter's original bytes and key to `topic` with the idempotent producer,
    partitioned as the original clients do, and check every delivery report.

    Returns:
        How many messages were sent (all of them delivered).

    Raises:
        TopicError: the topic does not exist, or a message was not delivered (the others were).
        KafkaException: the cluster does not answer.
    """
    from confluent_kafka import Producer

    producer = Producer(config.kafka_producer_config())
    if topic not in producer.list_topics(timeout=timeout_s).topics:
        raise TopicError(f"no topic {topic} on {config.kafka_bootstrap}")
    failures: list[str] = []

    def check(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    sent = 0
    for letter in letters:
        while True:
            try:
                producer.produce(topic, key=letter.key, value=letter.original, on_delivery=check)
                break
            except BufferError:  # the local queue is full: serve delivery reports, then try again
                producer.poll(0.5)
        sent += 1
        producer.poll(0)
    undelivered = producer.flush(timeout_s) + len(failures)
    if undelivered:
        first = (
            f"; first error: {failures[0]}" if failures else f"; no delivery report within {timeout_s:g} s"
        )
        raise TopicError(f"{undelivered} of {sent} replayed message(s) not delivered to {topic}{first}")
    return sent


@dlq_app.command("show")
def show(
    reason: ReasonOption = None,
    error_type: ErrorTypeOption = None,
    offset: OffsetOption = None,
    request_id: RequestIdOption = None,
    limit: Annotated[int, typer.Option(min=0, help="How many of the latest dead letters to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document, every reason counted.")] = False,
) -> None:
    """Dead letters by error type and reason, and the latest few with their source and original bytes."""
    from confluent_kafka import KafkaException

    chosen = selection(reason, error_type, offset, request_id)
    config = RigSettings()
    try:
        summary = summarize(config.topic("dlq"), read_dead_letters(config), chosen, limit)
    except (RigError, KafkaException) as error:
        typer.secho(f"refused: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    if as_json:
        typer.echo(json.dumps(summary_json(summary), indent=2))
    else:
        typer.echo("\n".join(summary_lines(summary)))


@dlq_app.command("replay")
def replay(
    reason: ReasonOption = None,
    error_type: ErrorTypeOption = None,
    offset: OffsetOption = None,
    request_id: RequestIdOption = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter of the requests topic.")
    ] = False,
    to: Annotated[
        str | None, typer.Option("--to", help="Topic to send to; default: the requests topic.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="List what would be sent, and send nothing.")] = False,
) -> None:
    """Send chosen dead letters of the requests topic back (original bytes and key) after a fix;
    any message not delivered fails the command."""
    from confluent_kafka import KafkaException

    chosen = selection(reason, error_type, offset, request_id)
    if chosen.is_everything() and not everything:
        raise typer.BadParameter(
            "choose with --reason, --error-type, --offset or --request-id, or give --all"
        )
    config = RigSettings()
    destination = to or config.topic("requests")
    plan = ReplayPlan(chosen, config.topic("requests"))
    try:
        # All chosen before any is sent: a dlq that cannot be read to its end replays nothing.
        letters = [
            letter for record in read_dead_letters(config) if (letter := plan.take(record)) is not None
        ]
        if dry_run:
            for letter in letters:
                typer.echo(letter_line(letter))
            typer.echo(f"dry run: would replay {plan.taken} dead letter(s) to {destination}{plan.left_out()}")
            return
        sent = send_originals(config, destination, letters)
    except (RigError, KafkaException) as error:
        typer.secho(f"failed: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"replayed {sent} dead letter(s) to {destination}{plan.left_out()}")
