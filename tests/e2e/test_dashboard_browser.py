"""The dashboard in a real browser (Debian's headless Chromium through Selenium): after a promotion and
a bad request, a running worker's page draws the promoted challenger's confidence sequence and lists
the dead letter's reason, and shows throughput and latency once requests flow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Producer
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from rig.feedback.metadata import MetadataStore
from rig.routing.control import read_routing
from rig.wire.records import DeadLetter
from sim.settings import WorldSettings
from sim.world import make_requests
from tests.e2e.conftest import consume, deploy_with_shadow, send_requests, workers
from tests.e2e.test_promotion import MIN_SAMPLES, one_round
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Flags that work as root on a machine without a display or a network beyond the loopback.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,2400",
)
BAD_REQUEST = b"this is not a request {"


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, driven by Debian's chromedriver (nothing downloaded)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Chromium or chromedriver missing: run ops/tools/install")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()


def test_the_dashboard_draws_the_promoted_challengers_evidence_and_the_dead_letters_reason(tmp_path) -> None:
    deployment = deploy_with_shadow(
        tmp_path, "better", WorldSettings(seed=41, entities=2_000, days=4), rounds=60
    )
    settings, v = deployment.settings, deployment.versions
    port = free_port()
    env = {
        "RIG_PROMOTER_MODE": "auto",
        "RIG_PROMOTER_MIN_SAMPLES": str(MIN_SAMPLES),
        # The calibration guardrail (tested by test_promotion) would hold the winner for ~6 more rounds.
        "RIG_PROMOTER_CALIBRATION_MARGIN": "0.06",
    }
    with workers(deployment, count=1, web_ports=[port], env=env) as processes:
        running = replace(deployment, processes=tuple(processes))
        store = MetadataStore(settings.resolved_metadata_url)
        for _ in range(14):
            one_round(running)
            print("evidence:", store.promoter_evidence(limit=1))
            if read_routing(settings).golden == v["better"]:
                break
        assert read_routing(settings).golden == v["better"], "not promoted"

        producer = Producer(settings.kafka_producer_config())
        producer.produce(settings.topic("requests"), key=b"ent-bad", value=BAD_REQUEST)
        assert producer.flush(30) == 0
        (letter,) = consume(
            settings,
            settings.topic("dlq"),
            DeadLetter,
            1,
            timeout_s=60,
            where=lambda d: d.original == BAD_REQUEST,
        )

        with chromium(tmp_path / "chromium") as browser:
            started = time.monotonic()
            browser.get(f"http://127.0.0.1:{port}/dashboard")
            promoted = f'g[data-challenger="{v["better"]}"][data-golden="{v["golden"]}"] circle.point'

            def drawn(page: webdriver.Chrome) -> bool:
                """The promoted pair's points and the dead letter's reason are on the page."""
                rows = page.find_elements(By.CSS_SELECTOR, "tr[data-reason]")
                listed = letter.reason in [row.get_attribute("data-reason") for row in rows]
                return listed and bool(page.find_elements(By.CSS_SELECTOR, promoted))

            waiting(browser).until(drawn)
            print(f"dashboard drawn {time.monotonic() - started:.1f} s after it was opened")

            # Live metrics: rates and latency between two polls, once requests flow again.
            send_requests(settings, make_requests(deployment.world, 500, seed=7, rate_per_s=1_000))
            measured: set[str] = set()

            def flowing(page: webdriver.Chrome) -> bool:
                for metric in ("requests_per_s", "predictions_per_s", "end_to_end_p99_ms"):
                    text = page.find_element(By.CSS_SELECTOR, f'[data-metric="{metric}"] .value').text
                    if positive(text):
                        measured.add(metric)
                return len(measured) == 3

            waiting(browser).until(flowing)
            screenshot = tmp_path / "dashboard.png"
            assert browser.save_screenshot(str(screenshot))
            print(f"dashboard screenshot: {screenshot}")

            recorded = store.promoter_evidence(golden=v["golden"], challenger=v["better"])
            assert len(browser.find_elements(By.CSS_SELECTOR, promoted)) == len(recorded) > 0
            assert browser.find_element(By.ID, "golden").text == v["better"]
            pair = f'section[data-pair="{v["golden"]}/{v["better"]}"]'
            decisions = browser.find_elements(By.CSS_SELECTOR, f"{pair} g.decision")
            assert [d.get_attribute("data-action") for d in decisions][-1:] == ["promote"]
            boundaries = {
                line.get_attribute("data-boundary")
                for line in browser.find_elements(By.CSS_SELECTOR, f"{pair} line")
            }
            assert {"0", "min effect 0.002"} <= boundaries
            assert browser.find_element(By.ID, "status").get_attribute("class") == "muted", "no error"
        store.close()


def waiting(browser: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    """A wait of at most a minute; the page redraws every poll, so an element found may be gone a
    moment later (stale): looked for again."""
    return WebDriverWait(
        browser,
        60,
        poll_frequency=0.5,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def positive(text: str) -> bool:
    """Whether a tile shows a number above 0 (not "no data" or "waiting ...")."""
    try:
        return float(text.replace(",", "")) > 0
    except ValueError:
        return False
