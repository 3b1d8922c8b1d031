"""The worker's join processes: what makes a child one, its death noticed, its stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rig.config import RigSettings
from streams.app import make_app
from streams.join_processes import PARENT_ENV, JoinProcesses, become_join_process, install_counts_page
from tests.support.ports import free_port
from tests.support.web import aiohttp_app

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_child_joins_only_with_its_own_port_and_knows_its_worker(settings: RigSettings) -> None:
    processes = JoinProcesses(settings.model_copy(update={"web_port": 7000, "join_processes": 2}))
    first, second = processes.environment(0), processes.environment(1)

    assert json.loads(first["RIG_WORKER_ROLES"]) == ["join"]
    assert first["RIG_JOIN_PROCESSES"] == "0", "a child starts no children"
    assert (first["RIG_WEB_PORT"], second["RIG_WEB_PORT"]) == ("7001", "7002")
    assert first[PARENT_ENV] == str(os.getpid())
    # the worker's join folder: each child claims a folder of its own in it (rig.feedback.store_folder)
    assert first.get("RIG_JOIN_DIR") == os.environ.get("RIG_JOIN_DIR")
    assert first["PATH"] == os.environ["PATH"], "the rest of the worker's environment goes along"
    quiet = JoinProcesses(settings.model_copy(update={"web_port": 0, "join_processes": 1}))
    assert quiet.environment(0)["RIG_WEB_PORT"] == "0", "no web server when the worker has none"


def test_with_static_membership_each_child_has_an_instance_id_of_its_own(settings: RigSettings) -> None:
    """Sharing one group.instance.id in the join's group, the children would fence each other out."""
    static = JoinProcesses(
        settings.model_copy(update={"join_processes": 2, "kafka_group_instance_id": "pod-3"})
    )

    ids = [static.environment(index)["RIG_KAFKA_GROUP_INSTANCE_ID"] for index in (0, 1)]

    assert ids == ["pod-3-join-0", "pod-3-join-1"]
    dynamic = JoinProcesses(
        settings.model_copy(update={"join_processes": 1, "kafka_group_instance_id": None})
    )
    assert dynamic.environment(0).get("RIG_KAFKA_GROUP_INSTANCE_ID") == os.environ.get(
        "RIG_KAFKA_GROUP_INSTANCE_ID"
    ), "without static membership nothing is added"


def test_the_worker_reads_its_childrens_metrics_where_they_listen(settings: RigSettings) -> None:
    def urls(**update: object) -> list[str]:
        return JoinProcesses(settings.model_copy(update={"join_processes": 2, **update})).urls("/metrics")

    assert urls(web_port=7000) == ["http://127.0.0.1:7001/metrics", "http://127.0.0.1:7002/metrics"]
    assert urls(web_port=7000, web_bind="0.0.0.0")[0] == "http://127.0.0.1:7001/metrics", "every address"
    assert urls(web_port=7000, web_bind="10.1.2.3")[1] == "http://10.1.2.3:7002/metrics"
    assert urls(web_port=7000, web_bind="::1")[0] == "http://[::1]:7001/metrics"
    assert urls(web_port=0) == [], "no web servers"


def test_the_first_child_that_exits_is_the_workers_failure(settings: RigSettings) -> None:
    processes = JoinProcesses(settings)
    processes.children = [subprocess.Popen(SLEEPER), subprocess.Popen(SLEEPER)]
    try:
        assert processes.failure() is None
        processes.children[1].kill()
        processes.children[1].wait()
        assert processes.failure() == f"join process 1 (pid {processes.children[1].pid}) exited with -9"
    finally:
        processes.stop()


def test_stop_ends_children_with_sigterm_and_kills_one_that_ignores_it(settings: RigSettings) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
        "time.sleep(60)"
    )
    processes = JoinProcesses(settings)
    processes.children = [
        subprocess.Popen(SLEEPER),
        subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE),
    ]
    assert processes.children[1].stdout is not None
    processes.children[1].stdout.readline()  # its handler is in place

    processes.stop(timeout_s=1)

    assert [child.returncode for child in processes.children] == [-15, -9]
    assert processes.failure() is None, "children that were stopped are no failure of the worker"


def run_as_join_process(parent: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import ctypes, os, threading; from streams.join_processes import become_join_process; "
        "before = threading.Thread(target=threading.Event().wait, daemon=True); before.start(); "
        "started = become_join_process(); "
        "after = threading.Thread(target=threading.Event().wait, daemon=True); after.start(); "
        "signal = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(signal), 0, 0, 0); "
        "policies = {os.sched_getscheduler(int(t)) for t in os.listdir('/proc/self/task')}; "
        "print(int(started), signal.value, *sorted(policies))"
    )
    env = {**os.environ, PARENT_ENV: parent}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_a_join_process_dies_with_its_worker_and_runs_only_on_idle_cores() -> None:
    child = run_as_join_process(str(os.getpid()))
    assert child.returncode == 0, child.stderr
    started, signal, *policies = map(int, child.stdout.split())
    assert started == 1, "it says it is a worker's join process"
    assert signal == 15, "SIGTERM when the worker ends"
    assert policies == [os.SCHED_IDLE], "every thread: started before the call and after it"


def test_a_process_no_worker_started_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARENT_ENV, raising=False)
    assert become_join_process() is False
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_join_process_whose_worker_is_gone_already_exits() -> None:
    child = run_as_join_process("1")  # not the child's parent: its worker ended and it was adopted
    assert child.returncode == 1
    assert "the worker that started this join process (pid 1) is gone" in child.stderr


def test_a_join_process_loads_none_of_the_serving_roles_libraries(settings: RigSettings) -> None:
    # ~95 MB resident on import instead of ~260 MB: XGBoost, Feast, pandas and scipy serve other roles.
    heavy = ("xgboost", "feast", "pandas", "scipy", "sklearn", "matplotlib", "sqlalchemy")
    probe = f"import sys, streams.worker; print(sorted(set({heavy!r}) & set(sys.modules)))"
    env = {**JoinProcesses(settings.model_copy(update={"join_processes": 1})).environment(0)}
    del env[PARENT_ENV]  # a join process's settings, without the check that its parent is a worker
    child = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split("\n")[-2] == "[]", child.stdout


def test_the_workers_join_counts_sum_its_childrens_and_say_which_did_not_answer(tmp_path: Path) -> None:
    def child(counts: dict[str, int]) -> web.Application:
        async def page(request: web.Request) -> web.Response:
            return web.json_response(counts)

        served = web.Application()
        served.router.add_get("/join/counts/", page)
        return served

    async def ask(children: list[dict[str, int]], silent: int = 0) -> tuple[int, Any]:
        async with contextlib.AsyncExitStack() as stack:
            urls = []
            for counts in children:
                server = await stack.enter_async_context(TestServer(child(counts)))
                urls.append(str(server.make_url("/join/counts/")))
            urls += [f"http://127.0.0.1:{free_port()}/join/counts/" for _ in range(silent)]  # none listens
            app = make_app(RigSettings(home=tmp_path))
            install_counts_page(app, urls, None)
            app.web.init_server()
            async with TestClient(TestServer(aiohttp_app(app))) as client:
                response = await client.get("/join/counts/")
                return response.status, await response.json()

    status, summed = asyncio.run(ask([{"joined": 5, "late": 1}, {"joined": 3, "orphans": 2}]))
    assert (status, summed) == (200, {"joined": 8, "late": 1, "orphans": 2})
    status, answer = asyncio.run(ask([{"joined": 5}], silent=1))
    assert status == 503 and "join processes [1] did not answer" in answer["error"], "no partial sum"


def test_a_join_process_whose_stop_hangs_exits_soon_after_its_worker_ended() -> None:
    # The child ignores the SIGTERM its worker's end sends, as one whose stop hangs would.
    child = (
        "import signal, time; from streams.join_processes import become_join_process; "
        "become_join_process(orphan_grace_s=1.0); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    worker = (
        "import os, subprocess, sys; "
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, "
        f"stderr=subprocess.DEVNULL, text=True, env={{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}); "
        "assert child.stdout.readline() == 'ready\\n'; print(child.pid)"  # then the worker ends
    )
    ended = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True, timeout=60)
    assert ended.returncode == 0, ended.stderr
    orphan = int(ended.stdout)
    deadline = time.monotonic() + 15
    while running(orphan) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(orphan), "the orphaned join process still runs"


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie waits only for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
