"""The feedback loop while workers die and come and go, outcomes flowing: every (request, model) pair
joined, folded by the promoter exactly once; with exactly-once processing, read once by a
read_committed reader."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from rig.feedback.metadata import MetadataStore
from rig.routing.control import read_routing
from streams.health import STALL_EXIT_CODE
from tests.e2e.conftest import get_json, sample, scrape
from tests.faults.conftest import (
    Answers,
    JoinedRows,
    OwnRedis,
    Stack,
    Traffic,
    deploy_stack,
    readiness,
    wait_ready,
)
from tests.support.ports import free_port
from tests.support.tcp_relay import TcpRelay

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, own_redis: OwnRedis) -> Stack:
    return deploy_stack(tmp_path_factory.mktemp("feedback"), redis_url=own_redis.url)


@pytest.fixture
def joined(stack: Stack) -> Iterator[JoinedRows]:
    reader = JoinedRows(stack.settings).start()
    yield reader
    reader.stop()


def challenger_pairs(joined: JoinedRows, ids: set[str], golden: str) -> Counter[str]:
    """Distinct joined (request, challenger) pairs of these requests, per challenger version."""
    return Counter(model for request_id, model in joined.rows if request_id in ids and model != golden)


def test_the_promoter_folds_every_pair_once_across_a_kill_and_two_rebalances(
    stack: Stack, joined: JoinedRows
) -> None:
    first_port, third_port = free_port(), free_port()
    traffic = Traffic(stack, count=6_000, rate_per_s=300, seed=11, outcomes=True)
    answers = Answers(stack.settings).start()
    with stack.worker("first", web_port=first_port) as first:  # holds the promoter (rig.joined)
        wait_ready(first_port, first)
        traffic.start()
        with stack.worker("killed") as killed:
            traffic.wait_sent(2_000)
            os.kill(killed.pid, signal.SIGKILL)
            killed.wait(10)
        with stack.worker("third", web_port=third_port) as third:
            wait_ready(third_port, third)
            traffic.wait_sent(4_500)
        traffic.join()
        answers.assert_complete(traffic, "kill -9 of a second worker, a third joining, outcomes flowing")
        short = joined.wait_for({i: answers.models[i] for i in traffic.ids}, timeout_s=240)
        state = get_json(f"http://127.0.0.1:{first_port}/promoter/")
        assert first.poll() is None
    answers.stop()

    repeats = sum(count - 1 for (request_id, _), count in joined.rows.items() if request_id in traffic.ids)
    print(f"joined: {len(traffic.ids) - len(short)} of {len(traffic.ids)} requests, repeated rows {repeats}")
    assert not short, f"{len(short)} requests not joined for every model, e.g. {sorted(short)[:3]}"
    golden = read_routing(stack.settings).golden
    assert golden is not None and state["golden"] == golden
    pairs = challenger_pairs(joined, traffic.ids, golden)
    folded = {version: entry["n"] for version, entry in state["challengers"].items()}
    # The promoter folds a row once its label window has closed in outcome time: the last rows wait.
    seen = {
        version: entry["n"] + entry["waiting"] + entry["beyond_window"]
        for version, entry in state["challengers"].items()
    }
    print(
        f"promoter folded {folded}, seen (folded, waiting, beyond the window) {seen}; "
        f"distinct joined pairs {dict(pairs)}"
    )
    assert seen == dict(pairs), "every (request, challenger) pair seen exactly once"
    assert all(entry["beyond_window"] == 0 for entry in state["challengers"].values())
    assert all(folded[version] >= 0.9 * count for version, count in pairs.items()), "most pairs matured"


def test_exactly_once_a_read_committed_reader_sees_every_prediction_and_joined_row_once(
    stack: Stack, joined: JoinedRows
) -> None:
    eos = {"RIG_PROCESSING_GUARANTEE": "exactly_once"}
    answers = Answers(stack.settings).start()
    second_port = free_port()
    traffic = Traffic(stack, count=5_000, rate_per_s=300, seed=12, outcomes=True)
    try:
        with stack.worker("eos-killed", env=eos) as doomed:
            traffic.start()
            traffic.wait_sent(1_500)
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait(10)
        with stack.worker("eos-first", env=eos):
            with stack.worker("eos-second", web_port=second_port, env=eos) as second:
                wait_ready(second_port, second)  # a member joined: partitions moved
                traffic.wait_sent(3_500)
            traffic.join()  # and left
            repeats = answers.assert_complete(
                traffic, "exactly once: kill -9, a second worker joining, leaving"
            )
            short = joined.wait_for({i: answers.models[i] for i in traffic.ids}, timeout_s=240)
    finally:
        answers.stop()
    assert not short, f"{len(short)} requests not joined for every model"
    joined_repeats = sum(c - 1 for (request_id, _), c in joined.rows.items() if request_id in traffic.ids)
    print(f"exactly once: repeated predictions {repeats}, repeated joined rows {joined_repeats}")
    assert repeats == 0 and joined_repeats == 0


def test_roles_apart_a_predict_worker_answers_and_a_feedback_worker_joins_every_request(
    stack: Stack, joined: JoinedRows
) -> None:
    """RIG_WORKER_ROLES splits a worker (deploy/README.md, "Roles apart"): one process answers the
    requests (and explains), another joins their outcomes and runs the promoter."""
    predict_port, feedback_port = free_port(), free_port()
    traffic = Traffic(stack, count=2_000, rate_per_s=300, seed=13, outcomes=True)
    answers = Answers(stack.settings).start()
    roles = {"predict": '["predict","explain"]', "feedback": '["feedback"]'}
    try:
        with (
            stack.worker(
                "predict-only", web_port=predict_port, env={"RIG_WORKER_ROLES": roles["predict"]}
            ) as predict,
            stack.worker(
                "feedback-only", web_port=feedback_port, env={"RIG_WORKER_ROLES": roles["feedback"]}
            ),
        ):
            wait_ready(predict_port, predict)
            traffic.start()
            traffic.join()
            answers.assert_complete(traffic, "a predict worker and a feedback worker apart")
            short = joined.wait_for({i: answers.models[i] for i in traffic.ids}, timeout_s=240)
            feedback_counts = get_json(f"http://127.0.0.1:{feedback_port}/join/counts/")
            promoter = get_json(f"http://127.0.0.1:{feedback_port}/promoter/")
            predict_pages = (
                get_json(f"http://127.0.0.1:{predict_port}/readyz"),
                not_found(f"http://127.0.0.1:{predict_port}/join/counts/"),
            )
            feedback_ready = get_json(f"http://127.0.0.1:{feedback_port}/readyz")
    finally:
        answers.stop()
    assert not short, f"{len(short)} requests not joined for every model, e.g. {sorted(short)[:3]}"
    assert feedback_counts["joined"] >= len(traffic.ids), feedback_counts
    assert promoter["golden"] == read_routing(stack.settings).golden, (
        "the promoter runs in the feedback worker"
    )
    assert predict_pages == ({"ready": True, "reasons": []}, True), "the predict worker has no join"
    assert feedback_ready == {"ready": True, "reasons": []}, (
        "no requests partition asked of a feedback worker"
    )


def not_found(url: str) -> bool:
    """Whether a GET of `url` answers 404."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=30).close()
    except urllib.error.HTTPError as error:
        return error.code == 404
    return False


def test_a_metadata_store_away_when_a_worker_starts_is_waited_for_and_the_promoter_goes_on_from_its_state(
    stack: Stack, joined: JoinedRows, postgres_url: str
) -> None:
    """A worker holding the promoter is killed once its state is saved in PostgreSQL; the next one starts
    while PostgreSQL refuses connections (a relay in front of it, switched off). It loads no model
    unverified and reads no joined row meanwhile; once PostgreSQL answers it serves, restores the saved
    tests and goes on from their offset: every (request, challenger) pair reaches the tests.
    Before, it served with models checked against meta.json only and started every test over from
    the committed offset, for its whole life without a metadata store."""
    url = sa.make_url(postgres_url)
    with TcpRelay((url.host or "127.0.0.1", url.port or 5432)) as postgres:
        postgres.on()
        env = {"RIG_METADATA_URL": url.set(port=postgres.port).render_as_string(hide_password=False)}
        store = MetadataStore(postgres_url)  # the test's own view, never through the relay
        traffic = Traffic(stack, count=3_000, rate_per_s=300, seed=13, outcomes=True)
        answers = Answers(stack.settings).start()
        first_port, second_port = free_port(), free_port()
        with stack.worker("first-with-postgres", web_port=first_port, env=env) as first:
            wait_ready(first_port, first)
            traffic.start()
            traffic.wait_sent(1_500)
            deadline = time.monotonic() + 60
            while (saved := store.load_promoter_state()) is None or saved[0] == 0:
                assert time.monotonic() < deadline, "the promoter saved no state with rows folded"
                time.sleep(0.5)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        postgres.off()
        with stack.worker("second-postgres-away", web_port=second_port, env=env) as second:
            deadline = time.monotonic() + 60
            while "metadata store" not in str(reasons := readiness(second_port)[1].get("reasons")):
                assert time.monotonic() < deadline, f"no wait for the metadata store: {reasons}"
                time.sleep(0.5)
            time.sleep(5)
            assert readiness(second_port)[0] == 503, "no model is loaded unverified meanwhile"
            promoter = stack.settings.consumer_group("promote")
            samples, _ = scrape(second_port)
            waited = sample(samples, "rig_waiting_seconds", group=promoter, dependency="the metadata store")
            assert waited > 0, f"the promoter's wait: {[k for k in samples if k[0] == 'rig_waiting_seconds']}"
            postgres.on()
            wait_ready(second_port, second)
            traffic.join()
            answers.assert_complete(traffic, "a worker started while the metadata store was away")
            short = joined.wait_for({i: answers.models[i] for i in traffic.ids}, timeout_s=240)
            assert not short, f"{len(short)} requests not joined for every model, e.g. {sorted(short)[:3]}"
            golden = read_routing(stack.settings).golden
            assert golden is not None
            pairs = challenger_pairs(joined, traffic.ids, golden)
            deadline = time.monotonic() + 60
            while True:
                state = get_json(f"http://127.0.0.1:{second_port}/promoter/")
                seen = {
                    version: entry["n"] + entry["waiting"] + entry["beyond_window"]
                    for version, entry in state.get("challengers", {}).items()
                }
                if all(seen.get(version, 0) >= count for version, count in pairs.items()):
                    break
                assert time.monotonic() < deadline, (
                    f"promoter saw {seen}, distinct joined pairs {dict(pairs)}: {state}"
                )
                time.sleep(1)
        answers.stop()
        store.close()
    log = (stack.root / "second-postgres-away.log").read_text(errors="replace")
    assert "promoter state restored" in log, "the saved tests were continued, not started over"


def test_a_worker_whose_join_cannot_restore_its_state_exits_for_a_restart(
    stack: Stack, tmp_path: Path
) -> None:
    """The join's state folder cannot be created (here a file stands in its place), so its source stops
    at its first assignment. The worker would go on answering requests, ready, with no join and no
    promoter: outcomes left unjoined behind it. It exits instead, for its supervisor to restart it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to((stack.settings.home / "models").resolve())
    (home / "join").write_text("not a folder")
    with stack.worker("no-join-state", env={"RIG_HOME": str(home)}) as worker:
        try:
            code = worker.wait(180)
        except subprocess.TimeoutExpired:
            code = None
    log = (stack.root / "no-join-state.log").read_text(errors="replace")
    assert code == STALL_EXIT_CODE, f"the worker is still running (exit code {code}) without its join"
    assert "the source of rig.join stopped" in log.replace(stack.settings.topic_prefix, "rig."), log[-3000:]


def test_join_processes_join_every_request_and_the_worker_exits_when_one_dies(
    stack: Stack, joined: JoinedRows
) -> None:
    """RIG_JOIN_PROCESSES=2: the worker predicts and runs the promoter, two child processes share the
    join's partitions. Every request is joined for every model, by both children (the worker's
    /join/counts/ sums theirs); when one is killed, the worker exits for its supervisor to restart it,
    and the other child ends with it."""
    port = ports_in_a_row(3)
    traffic = Traffic(stack, count=2_000, rate_per_s=300, seed=14, outcomes=True)
    answers = Answers(stack.settings).start()
    try:
        with stack.worker("join-processes", web_port=port, env={"RIG_JOIN_PROCESSES": "2"}) as worker:
            wait_ready(port, worker)
            children = child_pids(worker.pid, 2)
            wait_assigned(stack.root / "join-processes.log", children, stack.settings.topic("predictions"))
            traffic.start()
            traffic.join()
            answers.assert_complete(traffic, "the join in two child processes")
            short = joined.wait_for({i: answers.models[i] for i in traffic.ids}, timeout_s=240)
            counts = [get_json(f"http://127.0.0.1:{port + 1 + index}/join/counts/") for index in (0, 1)]
            samples, _ = scrape(port)  # the worker's page holds its children's
            promoter = get_json(f"http://127.0.0.1:{port}/promoter/")
            summed = get_json(f"http://127.0.0.1:{port}/join/counts/")  # after the children's
            os.kill(children[0], signal.SIGKILL)
            try:
                code = worker.wait(60)
            except subprocess.TimeoutExpired:
                code = None
            survivor_gone = eventually_gone(children[1], timeout_s=60)
    finally:
        answers.stop()
    assert not short, f"{len(short)} requests not joined for every model, e.g. {sorted(short)[:3]}"
    assert all(count.get("joined", 0) > 0 for count in counts), f"both children join: {counts}"
    assert sum(count["joined"] for count in counts) >= len(traffic.ids), counts
    assert summed["joined"] >= sum(count["joined"] for count in counts), f"the worker's sums: {summed}"
    for index, count in enumerate(counts):
        labels = {"event": "joined", "join_process": str(index)}
        assert sample(samples, "rig_join_events_total", **labels) >= count["joined"], (index, count)
        assert sample(samples, "rig_join_process_up", join_process=str(index)) == 1
    assert sample(samples, "rig_join_events_total", event="joined") == 0, "none of the worker's own"
    assert promoter["golden"] == read_routing(stack.settings).golden, "the promoter runs in the worker"
    assert code == STALL_EXIT_CODE, f"the worker did not exit for a restart (exit code {code})"
    assert survivor_gone, "the other join process ended with its worker"


def ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free ports (a worker's and its join processes')."""
    for _ in range(100):
        first = free_port()
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} free ports in a row")


def child_pids(pid: int, count: int, timeout_s: float = 60) -> list[int]:
    """The pids of the `count` child processes `pid` started, once it has (its restore children are
    theirs, not its)."""
    deadline = time.monotonic() + timeout_s
    while True:
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if len(children) >= count or time.monotonic() >= deadline:
            assert len(children) == count, f"{pid} has children {children}, not {count}"
            return children
        time.sleep(0.2)


def eventually_gone(pid: int, timeout_s: float) -> bool:
    """Whether process `pid` ends (or is a zombie nobody reaped) within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


def wait_assigned(log: Path, pids: list[int], topic: str, timeout_s: float = 120) -> None:
    """Wait until each of these processes logged an assignment of partitions of `topic` (the join's
    group has settled on them all)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = log.read_text(errors="replace").splitlines()
        assigned = {
            pid
            for pid in pids
            for line in lines
            if f"[{pid}]" in line and "partitions assigned" in line and f"'{topic}-" in line
        }
        if assigned == set(pids):
            return
        assert time.monotonic() < deadline, (
            f"join processes {sorted(set(pids) - assigned)} hold no {topic} partition"
        )
        time.sleep(0.5)


def test_a_worker_stopped_with_sigterm_stops_its_join_processes_first(stack: Stack) -> None:
    port = ports_in_a_row(2)
    with stack.worker("join-processes-stopped", web_port=port, env={"RIG_JOIN_PROCESSES": "1"}) as worker:
        wait_ready(port, worker)
        (child,) = child_pids(worker.pid, 1)
        wait_assigned(stack.root / "join-processes-stopped.log", [child], stack.settings.topic("predictions"))
        worker.terminate()
        try:
            code = worker.wait(90)
        except subprocess.TimeoutExpired:
            code = None
        child_gone = eventually_gone(child, timeout_s=5)
    log = (stack.root / "join-processes-stopped.log").read_text(errors="replace")
    assert code == 0, f"the worker did not stop cleanly (exit code {code})"
    assert child_gone, "its join process ended before it"
    assert f"[{child}] [INFO] partitions revoked" in log, "the join process left its group"


def test_a_join_process_creates_no_topic(stack: Stack) -> None:
    """A worker checks and creates the topics before it starts its join processes. A starting child that
    created them again undid an operator's deletion made meanwhile: a deleted predictions topic came back
    empty before the worker's own fault test could create it."""
    from confluent_kafka.admin import AdminClient

    from rig.wire.topics import ensure_topics
    from streams.join_processes import PARENT_ENV

    decisions = stack.settings.topic("decisions")  # the promoter's: no join reads or writes it
    admin = AdminClient(stack.settings.kafka_client_config())
    admin.delete_topics([decisions])[decisions].result()
    as_child = {"RIG_WORKER_ROLES": '["join"]', "RIG_JOIN_PROCESSES": "0", PARENT_ENV: str(os.getpid())}
    try:
        with stack.worker("join-process-alone", env=as_child) as child:
            wait_assigned(
                stack.root / "join-process-alone.log", [child.pid], stack.settings.topic("predictions")
            )
            topics = set(admin.list_topics(timeout=30).topics)
    finally:
        ensure_topics(stack.settings, ["decisions"])  # for the tests after this one
    assert stack.settings.topic("joined") in topics, "the child saw the stack's topics"
    assert decisions not in topics, "the join process created a topic"
