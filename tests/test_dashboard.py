"""The dashboard and the metrics: pages rendered over HTTP (httpx's ASGI transport) against the database
``make demo`` fills (run once per session, in real time, plus one failed job it does not make) and
against the CLI suite's workload on SQLite and PostgreSQL; actions behind the token and CSRF;
``/metrics`` parsed by prometheus_client's own parser; and a real headless Chromium driving a real
server process (skipped with one line where no browser is installed, failed when ``CI`` is set)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from postgres_support import require_postgres, throwaway_schema
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_cli import AT_5M, T0, Built, Greet, build, greeter

import djobs
from djobs.dashboard import app
from djobs.metrics import MetricsTracker, StorageCollector, render
from djobs.storage import JobFilter
from djobs.storage._inspect import open_existing
from djobs.testing import open_test_engine, success

TOKEN = "s3cret-token"
ROOT = Path(__file__).parent.parent
DOCS_IMAGES = ROOT / "docs" / "images"
DEMO_DB = "djobs-demo.db"


class Resize(msgspec.Struct):
    width: int


def resize(params: Resize, ctx: djobs.JobContext) -> None:
    if params.width <= 0:
        raise ValueError(f"cannot resize to width {params.width}")


resizer = djobs.Job.make("resize", params=Resize, execute=resize, max_attempts=1)


@pytest.fixture(scope="session")
def demo_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The database ``make demo`` leaves (every kind of work, in real time: about ten seconds),
    plus a failed job and a completed one, which the demo does not make."""
    where = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"], cwd=where, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (where / "demo-output.txt").write_text(done.stdout)

    async def add_failed_work() -> None:
        async with djobs.open_engine([resizer], storage=djobs.sqlite(where / DEMO_DB), worker=None) as engine:
            for width in (0, 640):
                await engine.client.job(resizer).now(Resize(width))

    async def add_workflows_now() -> None:
        # Workflows besides the demo's completed one: one completed, one sleeping a day (from now, in real time).
        now = datetime.now(UTC)
        async with open_test_engine([visits], storage=djobs.sqlite(where / DEMO_DB), start=now) as engine:
            for wid, who in (("visit-1", "quick"), ("visit-2", "Ada")):
                success(await engine.client.workflow(visits).start(id=wid, input=Visit(who)))
            await trio.sleep(1)

    trio.run(add_failed_work)
    trio.run(add_workflows_now, clock=trio.testing.MockClock(autojump_threshold=0))
    return where


def test_make_demo_shows_every_kind_working_and_ends(demo_database: Path) -> None:
    # `make demo` promises every kind working, ending by itself (the fixture ran it, in real time).
    out = (demo_database / "demo-output.txt").read_text()
    for heading in ("Continuous:", "Debounce:", "Task:", "Workflow:", "Queue:"):
        assert f"] {heading}" in out, heading
    assert "(the instance survived the restart)" in out
    assert "result: 'acct-ada: verified'" in out  # the workflow slept, took its signal and ran its last step
    assert "cron job 'ticker' fired" in out
    assert out.rstrip().endswith("demo finished")


@pytest.fixture
def demo_db(demo_database: Path, tmp_path: Path) -> Path:
    """A copy of the demo's database for one test (actions change it)."""
    for suffix in ("", "-wal", "-shm"):
        if (demo_database / (DEMO_DB + suffix)).exists():
            shutil.copy(demo_database / (DEMO_DB + suffix), tmp_path / (DEMO_DB + suffix))
    return tmp_path / DEMO_DB


def test_pages_render_the_demo_database(demo_db: Path) -> None:
    overview, jobs, failed, instances, crons, metrics = get(
        app(str(demo_db)), "/", "/jobs?name=thumbnail", "/failed", "/instances", "/cron", "/metrics"
    )
    assert all(page.status_code == 200 for page in (overview, jobs, failed, instances, crons, metrics))
    completed = re.search(r'id="count-completed"><span>completed</span><b>(\d+)</b>', overview.text)
    assert completed is not None and int(completed.group(1)) >= 10  # the demo's thumbnails and ticks
    assert re.search(r'id="count-failed"><span>failed</span><b>1</b>', overview.text)
    bars = re.findall(r'height="(\d+)" fill="#3c9d5d"', overview.text)
    assert any(int(h) > 0 for h in bars)  # the demo ran within the last hour: the chart has bars
    assert jobs.text.count('class="job"') >= 9 and "thumbs/" not in jobs.text  # results only on a job's page
    assert "cannot resize to width 0" in failed.text
    assert "debounce:webhookBatcher:contact-456" in instances.text
    assert "ticker" in crons.text and "every 1 second" in crons.text
    found = families(metrics.text)
    assert {s.labels["job"] for s in found["djobs_queue_jobs_by_name"].samples} >= {"thumbnail", "resize"}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Built]:
    if request.param == "sqlite":
        path = tmp_path / "jobs.db"
        yield build(tmp_path, djobs.sqlite(path), ["--db", str(path)])
        return
    dsn = require_postgres()
    with throwaway_schema(dsn) as schema:
        yield build(tmp_path, djobs.postgres(dsn, schema=schema), ["--db", dsn, "--schema", schema])


def where(db: Built) -> dict[str, Any]:
    return {"db": db.args[1], "schema": db.args[3] if len(db.args) > 2 else "djobs"}


async def fetch(application: Any, *requests: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=application)
    out = []
    async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as client:
        for method, url, kw in requests:
            out.append(await client.request(method, url, **kw))
    await application.state.dashboard.aclose()
    return out


def get(application: Any, *urls: str) -> list[httpx.Response]:
    return trio.run(fetch, application, *[("GET", u, {}) for u in urls])


def test_pages_render_every_kind_of_work(db: Built) -> None:
    application = app(**where(db), clock=AT_5M)
    overview, failed_jobs, job, instances, instance, crons, failed, missing = get(
        application,
        "/",
        "/jobs?status=failed",
        f"/jobs/{db.failed}",
        "/instances?kind=continuous",
        "/instance?key=continuous:refresher:user-1",
        "/cron",
        "/failed",
        "/jobs/nope",
    )
    assert overview.status_code == 200
    assert re.search(r'id="count-failed"><span>failed</span><b>1</b>', overview.text)
    assert "<svg" in overview.text and "Completed and failed per minute" in overview.text
    assert "lateness" in overview.text and "<b>5m</b>" in overview.text  # the due job has waited 5 minutes
    assert db.failed in failed_jobs.text and db.completed not in failed_jobs.text
    assert "no greeting for fail" in job.text and "&#34;fail&#34;" in job.text  # params, escaped
    assert instances.text.count("continuous:refresher:user-") == 2
    assert "&#34;token&#34;: &#34;t-1&#34;" in instance.text and "(run)" in instance.text
    assert "0 3 * * *" in crons.text and "2026-01-01 03:00:00Z" in crons.text and "2026-01-02 03:00:00Z" in crons.text
    assert db.failed in failed.text
    assert missing.status_code == 404
    for page in (overview, job, crons):
        assert 'method="post"' not in page.text  # read-only: no action anywhere


def test_jobs_pages_filter_and_page_without_loading_every_row(db: Built) -> None:
    first, second, by_name = get(
        app(**where(db), clock=AT_5M), "/jobs?limit=2", f"/jobs?limit=2&after={db.completed}", "/jobs?name=nobody"
    )
    assert re.findall(r'class="job" href="/jobs/([^"]+)"', first.text) == [db.running, db.completed]
    assert f"after={db.completed}" in first.text
    assert re.findall(r'class="job" href="/jobs/([^"]+)"', second.text) == [db.failed, db.due]
    assert "no jobs match" in by_name.text


def test_no_secret_on_any_page() -> None:
    dsn = require_postgres()
    secret = "hunter2-secret"
    with_password = dsn.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    with throwaway_schema(dsn) as schema:

        async def create() -> None:
            async with djobs.postgres(dsn, schema=schema).open():
                pass

        trio.run(create)
        pages = get(app(with_password, schema=schema, token=TOKEN), "/", "/jobs", "/cron", "/failed", "/metrics")
    for page in pages:
        assert page.status_code == 200, page.text
        assert secret not in page.text and TOKEN not in page.text
    assert "postgres@127.0.0.1:5432/test" in pages[0].text


def test_actions_need_the_token_a_session_csrf_and_the_same_origin(db: Built) -> None:
    origin = {"origin": "http://dash.test"}

    async def scenario() -> None:
        read_only = app(**where(db), clock=AT_5M)
        [refused] = await fetch(read_only, ("POST", f"/jobs/{db.failed}/retry", {"headers": origin}))
        assert refused.status_code == 403 and "read-only" in refused.text

        application = app(**where(db), token=TOKEN, clock=AT_5M)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as c:
            page = await c.get(f"/jobs/{db.failed}")
            assert "log in for actions" in page.text and 'id="actions"' not in page.text
            r = await c.post(f"/jobs/{db.failed}/retry", headers=origin)
            assert r.status_code == 403 and "log in" in r.text
            bad = await c.post("/login", data={"token": "wrong-token"}, headers=origin)
            assert bad.status_code == 401
            forged_login = await c.post("/login", data={"token": TOKEN}, headers={"origin": "http://evil.test"})
            assert forged_login.status_code == 403
            ok = await c.post("/login", data={"token": TOKEN}, headers=origin)
            assert ok.status_code == 303
            cookie = ok.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            page = await c.get(f"/jobs/{db.failed}")
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
            assert csrf is not None and 'value="retry"' in page.text
            # A page on another site: its Origin, or its lack of the CSRF token, refuses it.
            for headers, data in (
                ({"origin": "http://evil.test"}, {"csrf": csrf.group(1)}),
                (origin, {"csrf": "0" * 64}),
                (origin, {}),
                ({}, {"csrf": csrf.group(1)}),
            ):
                r = await c.post(f"/jobs/{db.failed}/retry", headers=headers, data=data)
                assert r.status_code == 403, (headers, data)
            r = await c.post(f"/jobs/{db.failed}/retry", headers=origin, data={"csrf": csrf.group(1)})
            assert r.status_code == 303 and r.headers["location"].startswith(f"/jobs/{db.failed}?done=retried")
            again = await c.post(f"/jobs/{db.failed}/retry", headers=origin, data={"csrf": csrf.group(1)})
            assert again.status_code == 409 and "only a failed or cancelled job can be retried" in again.text
            r = await c.post(f"/jobs/{db.due}/cancel", headers=origin, data={"csrf": csrf.group(1)})
            assert r.status_code == 303
            r = await c.post("/cron/nightly/disable", headers=origin, data={"csrf": csrf.group(1)})
            assert r.status_code == 303
            crons = await c.get("/cron")
            assert 'value="enable"' in crons.text
        await application.state.dashboard.aclose()
        async with open_existing(where(db)["db"], schema=where(db)["schema"]) as opened:
            retried = await opened.storage.get_job(db.failed)
            cancelled = await opened.storage.get_job(db.due)
            [cron] = await opened.storage.list_cron_jobs()
        assert retried is not None and retried.status == "pending"
        assert cancelled is not None and cancelled.status == "cancelled"
        assert cron.enabled is False

    trio.run(scenario)


def test_mounted_under_a_prefix_links_stay_inside(db: Built) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    inner = app(**where(db), clock=AT_5M)
    host = Starlette(routes=[Mount("/ops", app=inner)])

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as c:
            page = await c.get("/ops/jobs")
        await inner.state.dashboard.aclose()
        return page

    page = trio.run(scenario)
    assert page.status_code == 200
    assert 'href="/ops/jobs/' in page.text and 'href="/ops/cron"' in page.text


# -- metrics ---------------------------------------------------------------------------------------


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_endpoint_reads_storage(db: Built) -> None:
    [page] = get(app(**where(db), clock=AT_5M), "/metrics")
    assert page.headers["content-type"].startswith("text/plain")
    found = families(page.text)
    depth = {s.labels["status"]: s.value for s in found["djobs_queue_jobs"].samples}
    assert depth == {"pending": 2, "running": 1, "completed": 1, "failed": 1, "cancelled": 1}
    by_name = {(s.labels["job"], s.labels["status"]): s.value for s in found["djobs_queue_jobs_by_name"].samples}
    assert by_name[("greet", "failed")] == 1
    assert found["djobs_queue_lateness_seconds"].samples[0].value == 300
    instances = {(s.labels["kind"], s.labels["status"]): s.value for s in found["djobs_instances"].samples}
    assert instances == {("continuous", "running"): 2, ("debounce", "debouncing"): 1}
    assert found["djobs_storage_up"].samples[0].value == 1
    assert found["djobs_instances_active"].samples[0].value == 1  # the other worker's lease on user-1


def test_metrics_tracker_counts_what_the_engine_does() -> None:
    registry = CollectorRegistry()

    async def scenario() -> str:
        tracker = MetricsTracker(registry=registry)
        async with open_test_engine([greeter], tracker=tracker) as engine:
            for name in ("a", "b", "fail"):
                success(await engine.client.job(greeter).later(Greet(name), delay="2 seconds"))
            await trio.sleep(5)
            await engine.wait_idle()
            collector = StorageCollector(engine.storage)
            registry.register(collector)
            await collector.refresh()
        return render(registry).decode()

    found = families(trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0)))
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in found.values() for s in f.samples}
    greet = (("job", "greet"),)
    assert value[("djobs_jobs_enqueued_total", greet)] == 3
    assert value[("djobs_jobs_started_total", greet)] == 3
    assert value[("djobs_jobs_completed_total", greet)] == 2
    assert value[("djobs_jobs_failed_total", greet)] == 1
    assert value[("djobs_job_run_duration_seconds_count", greet)] == 3
    assert value[("djobs_job_lateness_seconds_count", greet)] == 3
    assert value[("djobs_queue_jobs", (("status", "completed"),))] == 2


# -- a real browser -----------------------------------------------------------------------------


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser() -> Iterator[Any]:
    found = _chromium()
    if found is None:
        message = "browser tests skipped: no chromium; install it with: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message.replace("skipped", "cannot run in CI"))
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


REFRESH = ("--refresh", "600")


@pytest.fixture
def server(demo_db: Path) -> Iterator[tuple[str, Path]]:
    """``djobs dashboard`` with a token, in a process of its own, over a copy of the demo's database."""
    process = subprocess.Popen(
        # From the database's directory, so the pages (and the screenshots in the docs) show its name only.
        # A live job's page reloads itself every --refresh seconds; a reload while the browser reads
        # the page loses its elements, so the walk-through's pages hold still for ten minutes.
        [sys.executable, "-m", "djobs.cli", "dashboard", "--db", DEMO_DB, "--port", "0", "--token", TOKEN, *REFRESH],
        stderr=subprocess.PIPE,
        text=True,
        cwd=demo_db.parent,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        url = re.search(r"at (http://\S+?)[,;]", line)
        assert url is not None, line + process.stderr.read()
        yield url.group(1), demo_db
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the browser test saves its screenshots: the docs' images with DJOBS_UPDATE_SCREENSHOTS=1
    (how those were made), else a temporary directory, so a test run leaves the tree as it was."""
    return DOCS_IMAGES if os.environ.get("DJOBS_UPDATE_SCREENSHOTS") == "1" else tmp_path


def test_in_a_real_browser_filter_open_and_retry_a_failed_job(
    browser: Any, server: tuple[str, Path], screenshots: Path
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    url, path = server

    async def failed_ids() -> list[str]:
        async with open_existing(str(path)) as opened:
            return [r.id for r in await opened.storage.list_jobs(JobFilter(status="failed"))]

    [failed_id] = trio.run(failed_ids)
    # A page the browser is leaving mid-read answers "Node with given id does not belong to the
    # document" (a WebDriverException, not the StaleElementReferenceException waits ignore by
    # default): a wait reads again until its condition holds or its 10 seconds end.
    wait = WebDriverWait(browser, 10, ignored_exceptions=(WebDriverException,))
    browser.get(url + "/")
    assert browser.find_element(By.ID, "chart").tag_name == "svg"
    browser.save_screenshot(str(screenshots / "dashboard-overview.png"))
    browser.find_element(By.LINK_TEXT, "log in for actions").click()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait.until(ec.presence_of_element_located((By.ID, "flash")))
    browser.find_element(By.LINK_TEXT, "Jobs").click()
    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("failed")
    browser.find_element(By.ID, "apply").click()
    wait.until(ec.title_contains("Failed jobs"))
    links = browser.find_elements(By.CSS_SELECTOR, "a.job")
    assert [a.text for a in links] == [failed_id]
    browser.save_screenshot(str(screenshots / "dashboard-failed-jobs.png"))
    links[0].click()
    assert browser.find_element(By.ID, "status").text == "failed"
    browser.save_screenshot(str(screenshots / "dashboard-job.png"))
    browser.find_element(By.CSS_SELECTOR, 'button[value="retry"]').click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "pending"))
    assert "retried" in browser.find_element(By.ID, "flash").text
    assert trio.run(failed_ids) == []  # stored: pending again, for the next worker
    # The workflows: filter the sleeping ones, open one with its steps, and cancel it.
    browser.find_element(By.LINK_TEXT, "Workflows").click()
    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("sleeping")
    browser.find_element(By.ID, "apply").click()
    wait.until(ec.title_contains("Sleeping workflows"))
    links = browser.find_elements(By.CSS_SELECTOR, "a.workflow")
    assert [a.text for a in links] == ["visit-2"]
    browser.save_screenshot(str(screenshots / "dashboard-workflows.png"))
    links[0].click()
    assert browser.find_element(By.ID, "status").text == "sleeping"
    assert browser.find_element(By.ID, "current").text == "sleep"
    steps = browser.find_elements(By.CSS_SELECTOR, "#steps tr")
    assert [row.find_elements(By.TAG_NAME, "td")[2].text for row in steps[1:]] == ["greet", "sleep"]
    browser.save_screenshot(str(screenshots / "dashboard-workflow.png"))
    browser.find_element(By.CSS_SELECTOR, 'button[value="cancel"]').click()
    wait.until(ec.presence_of_element_located((By.ID, "cancel-requested")))
    assert "cancel recorded" in browser.find_element(By.ID, "flash").text
    for name in ("overview", "failed-jobs", "job", "workflows", "workflow"):
        assert (screenshots / f"dashboard-{name}.png").read_bytes().startswith(b"\x89PNG")


def test_what_users_stored_is_escaped_and_live_jobs_reload(db: Built) -> None:
    async def enqueue_hostile() -> str:
        storage = djobs.sqlite(db.path) if len(db.args) == 2 else djobs.postgres(db.args[1], schema=db.args[3])
        async with open_test_engine([greeter], storage=storage, worker=None) as engine:
            client = engine.client.for_tenant("<b>acme</b>")
            return success(await client.job(greeter).later(Greet("<script>alert(1)</script>")))

    hostile = trio.run(enqueue_hostile, clock=trio.testing.MockClock(autojump_threshold=0))
    page, listing, done, overview = get(
        app(**where(db), clock=AT_5M), f"/jobs/{hostile}", "/jobs?tenant=<b>acme</b>", f"/jobs/{db.completed}", "/"
    )
    for text in (page.text, listing.text):
        assert "<script>alert" not in text and "<b>acme" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "&lt;b&gt;acme&lt;/b&gt;" in listing.text
    # A pending job's page reloads itself (progress and status follow); a finished one's does not.
    assert '<meta http-equiv="refresh" content="2">' in page.text
    assert 'http-equiv="refresh"' not in done.text
    assert 'href="/jobs" class="on"' in page.text and 'href="/" class="on"' in overview.text


def test_the_dashboard_command_refuses_what_it_cannot_serve(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from djobs.cli import main

    assert main(["dashboard", "--db", str(tmp_path / "missing.db")]) == 3
    assert "no database at" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "jobs.db"
    build(tmp_path, djobs.sqlite(path), ["--db", str(path)])
    assert main(["dashboard", "--db", str(path), "--token", "short"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    for refresh in ("0", "1_0", "1" * 5000):
        assert main(["dashboard", "--db", str(path), "--refresh", refresh]) == 2
        assert "argument --refresh: expected a" in capsys.readouterr().err


@given(port=st.one_of(st.integers(max_value=-1), st.integers(min_value=65536), st.text(max_size=6)))
@example(port="0\x1f")  # str.strip() takes \x1c-\x1f as space, int() does not: the old oracle raised
@example(port="1_0")  # int() reads 10; a port is digits
@example(port="\u0663")  # ARABIC-INDIC DIGIT THREE: int() reads 3; a port is ASCII digits
@example(port="1" * 5000)  # int() raises ValueError past 4,300 digits
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_port_that_is_none_is_a_usage_error_at_parse(port: object, capsys: pytest.CaptureFixture[str]) -> None:
    from djobs.cli import main

    text = str(port)
    # A port is ASCII digits, with an optional sign and spaces or tabs around them, from 0 to 65535.
    if re.fullmatch(r"[ \t]*[+-]?[0-9]{1,30}[ \t]*", text, re.ASCII) and 0 <= int(text) <= 65535:
        return
    assert main(["dashboard", "--db", "unused.db", f"--port={text}"]) == 2
    err = capsys.readouterr().err
    assert "argument --port: expected a port" in err
    assert "Traceback" not in err


def test_an_address_the_dashboard_cannot_listen_on_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from djobs.cli import main

    path = tmp_path / "jobs.db"
    build(tmp_path, djobs.sqlite(path), ["--db", str(path)])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for host, reason in (
            ("127.0.0.1", "Address already in use"),
            ("192.0.2.1", "Cannot assign requested address"),  # TEST-NET-1: no address of this machine
            ("nosuch.invalid", ""),  # an unknown host (the resolver's words vary)
        ):
            assert main(["dashboard", "--db", str(path), "--host", host, "--port", port]) == 1
            err = capsys.readouterr().err
            assert err.startswith(f"djobs: cannot listen on {host}:{port}: {reason}"), err
            assert err.count("\n") == 1 and "Traceback" not in err and "Exception" not in err, err


@pytest.mark.trio
async def test_serve_raises_the_bind_error_itself_and_refuses_a_bad_port(tmp_path: Path) -> None:
    from djobs.dashboard import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError, match="Address already in use"):  # the bind's error, not a group
                await nursery.start(partial(serve, str(tmp_path / "x.db"), port=taken.getsockname()[1]))
    for port in (-1, 65536, "8000", True):
        with pytest.raises(djobs.ValidationError, match="port must be an int from 0 to 65535"):
            await serve(str(tmp_path / "x.db"), port=port)  # type: ignore[arg-type]


def test_the_metrics_tracker_forwards_to_the_tracker_it_wraps() -> None:
    class Sender:
        """A background tracker: its task must run while the engine is open."""

        def __init__(self) -> None:
            self.events: list[str] = []
            self.running = False
            self.closed = trio.Event()

        def emit(self, event: djobs.TrackedEvent) -> None:
            self.events.append(event.type)

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            self.running = True
            task_status.started()
            await self.closed.wait()

        async def aclose(self) -> None:
            self.closed.set()

    sender = Sender()

    async def scenario() -> None:
        tracker = MetricsTracker(sender, registry=CollectorRegistry())
        async with open_test_engine([greeter], tracker=tracker) as engine:
            success(await engine.client.job(greeter).now(Greet("a")))
            assert sender.running

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert "job.completed" in sender.events and sender.closed.is_set()


def test_an_unusable_database_is_a_page_saying_why_until_it_is_there(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    application = app(str(path))

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as c:
            before = await c.get("/")
            async with djobs.sqlite(path).open():  # an engine creates it
                pass
            after = await c.get("/")
        await application.state.dashboard.aclose()
        return [before, after]

    before, after = trio.run(scenario)
    assert before.status_code == 503 and "no database at" in before.text
    assert after.status_code == 200 and "Overview" in after.text
    with pytest.raises(djobs.ValidationError, match="at least 8 characters"):
        app(str(path), token="short")
    for refresh in (0, -1, True, 1.5):
        with pytest.raises(djobs.ValidationError, match="refresh must be a whole number of seconds"):
            app(str(path), refresh=refresh)  # type: ignore[arg-type]


def test_text_no_storage_holds_is_a_bad_request_on_every_storage(db: Built) -> None:
    # A NUL in a filter or an id reached PostgreSQL, which refused the query: the page said
    # "Database unavailable" (503) where SQLite answered 200. Now both refuse it, with a 400.
    urls = [
        "/jobs?tenant=%00",
        "/jobs?name=a%00b",
        "/jobs?correlation_id=a%00",
        "/jobs?after=%00",
        "/jobs/a%00b",
        "/instances?name=a%00",
        "/instances?tenant=%00",
        "/instance?key=continuous:refresher:a%00",
    ]
    pages = get(app(**where(db), clock=AT_5M), *urls, "/instance?key=continuous:refresher:user%E2%90%801", "/jobs")
    for url, page in zip(urls, pages, strict=False):
        assert page.status_code == 400, (url, page.status_code)
        assert "NUL" in page.text and "Database unavailable" not in page.text
    # "␀" is how a NUL prints; a key holding it names nothing (a 404), as on SQLite.
    key_page, jobs_page = pages[-2:]
    assert key_page.status_code == 404 and jobs_page.status_code == 200  # the dashboard still works


def test_an_id_with_a_slash_or_a_lone_surrogate_gets_the_styled_page_the_guide_promises(db: Built) -> None:
    # GET /jobs/a/b matched the POST-only action route: a plain-text 405. A lone surrogate's
    # UTF-8 (%ED%A0%80) was decoded to U+FFFD and named nothing: a 404, not the promised 400.
    application = app(**where(db), clock=AT_5M)
    job, job_encoded, letter, surrogate, surrogate_filter = get(
        application,
        "/jobs/a/b",
        "/jobs/a%2Fb",
        "/dead-letters/a/b",
        "/workflow?key=%ED%A0%80",
        "/jobs?name=%ED%A0%80",
    )
    for page in (job, job_encoded):
        assert page.status_code == 404 and "no job with id &#39;a/b&#39;" in page.text, page.text[:300]
        assert page.headers["content-type"].startswith("text/html")
    assert letter.status_code == 404 and letter.headers["content-type"].startswith("text/html")
    for page in (surrogate, surrogate_filter):
        assert page.status_code == 400 and "Bad request" in page.text, (page.status_code, page.text[:300])


# -- workflows and bad query parameters ------------------------------------------------------------


class Visit(msgspec.Struct):
    who: str


def greet_step(who: str) -> str:
    return f"hello {who}"


async def visit(params: Visit, ctx: djobs.WorkflowContext) -> str:
    greeting = await ctx.step("greet", greet_step, params.who)
    if params.who != "quick":
        await ctx.sleep("1 day")
    return greeting


visits = djobs.Workflow.make("visit", input=Visit, result=str, execute=visit)


def _storage(db: Built) -> Any:
    return djobs.sqlite(db.path) if len(db.args) == 2 else djobs.postgres(db.args[1], schema=db.args[3])


def add_workflows(db: Built) -> None:
    """Three workflows at 00:00: one completed, two sleeping a day (one in tenant acme)."""

    async def run() -> None:
        async with open_test_engine([visits], storage=_storage(db), start=T0) as engine:
            c = engine.client.workflow(visits)
            success(await c.start(id="w-1", input=Visit("quick")))
            success(await c.start(id="w-2", input=Visit("slow")))
            success(await engine.client.for_tenant("acme").workflow(visits).start(id="w-3", input=Visit("acme")))
            await trio.sleep(1)
            await engine.wait_idle()

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_workflows_page_lists_filters_pages_and_shows_one_with_its_steps(db: Built) -> None:
    add_workflows(db)
    listing, sleeping, first, second, acme, one, missing = get(
        app(**where(db), clock=AT_5M),
        "/workflows",
        "/workflows?status=sleeping",
        "/workflows?limit=2",
        "/workflows?limit=2&after=workflow:visit:w-1",
        "/workflows?tenant=acme",
        "/workflow?key=workflow:visit:w-2",
        "/workflow?key=workflow:visit:nobody",
    )
    ids = lambda page: re.findall(r'class="workflow" href="[^"]+">([^<]+)</a>', page.text)  # noqa: E731
    assert listing.status_code == 200 and 'href="/workflows" class="on"' in listing.text
    assert sorted(ids(listing)) == ["w-1", "w-2", "w-3"]
    assert sorted(ids(sleeping)) == ["w-2", "w-3"] and "Sleeping workflows" in sleeping.text
    # In key order: the tenant's key (workflow:visit:acme␟w-3) before the others.
    assert ids(first) == ["w-3", "w-1"] and "after=workflow%3Avisit%3Aw-1" in first.text
    assert ids(second) == ["w-2"] and 'id="next"' not in second.text
    assert ids(acme) == ["w-3"]
    assert "2026-01-02T00:00:00+00:00" in listing.text  # the sleepers' wake-up time
    assert one.status_code == 200 and 'id="status" class="status s-sleeping"' in one.text
    assert 'id="current">sleep<' in one.text and 'id="wake-at">2026-01-02T00:00:00+00:00<' in one.text
    steps = re.findall(r"<tr><td class=\"n\">(\d+)</td><td>(\w+)</td><td>([^<]+)</td>", one.text)
    assert steps == [("1", "step", "greet"), ("2", "sleep", "sleep")]  # numbered from 1, as the CLI numbers them
    assert "&#34;who&#34;: &#34;slow&#34;" in one.text  # the input, as JSON
    assert 'method="post"' not in one.text  # read-only without a token
    assert missing.status_code == 404


def test_a_workflow_is_cancelled_from_the_dashboard_and_an_engine_ends_it(db: Built) -> None:
    add_workflows(db)
    origin = {"origin": "http://dash.test"}
    key = "workflow:visit:w-2"

    async def scenario() -> None:
        application = app(**where(db), token=TOKEN, clock=AT_5M)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as c:
            assert (await c.post("/login", data={"token": TOKEN}, headers=origin)).status_code == 303
            page = await c.get(f"/workflow?key={key}")
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
            assert csrf is not None and 'value="cancel"' in page.text
            forged = await c.post(f"/workflows/cancel?key={key}", headers=origin, data={"csrf": "0" * 64})
            assert forged.status_code == 403
            r = await c.post(f"/workflows/cancel?key={key}", headers=origin, data={"csrf": csrf.group(1)})
            assert r.status_code == 303 and r.headers["location"].startswith(
                "/workflow?key=workflow%3Avisit%3Aw-2&done="
            )
            page = await c.get(r.headers["location"])
            assert 'id="cancel-requested"' in page.text and "cancel recorded" in page.text
            ended = await c.post(
                "/workflows/cancel?key=workflow:visit:w-1", headers=origin, data={"csrf": csrf.group(1)}
            )
            assert ended.status_code == 409 and "already ended completed" in ended.text
        await application.state.dashboard.aclose()

    trio.run(scenario)

    async def engine_runs_it() -> str:
        async with open_test_engine([visits], storage=_storage(db), start=T0 + timedelta(minutes=10)) as engine:
            # Not wait_idle: the database's other alarms are due, and this engine runs workflows only.
            await trio.sleep(5)
            return success(await engine.client.workflow(visits).status("w-2")).status

    assert trio.run(engine_runs_it, clock=trio.testing.MockClock(autojump_threshold=0)) == "cancelled"


#: Every action route on something not stored, and what its 404 page says (as its page's GET,
#: and as the CLI's exit code 4): a client tells "gone" from "not allowed now" (a 409).
MISSING_ACTIONS = {
    "/jobs/nope/retry": "no job with id 'nope' is stored",
    "/jobs/nope/cancel": "no job with id 'nope' is stored",
    "/cron/nope/enable": "no cron job named 'nope' is stored",
    "/cron/nope/disable": "no cron job named 'nope' is stored",
    "/cron/nope/run-now": "no cron job named 'nope' is stored",
    "/dead-letters/nope/retry": "no dead letter with id 'nope' is stored",
    "/dead-letters/nope/discard": "no dead letter with id 'nope' is stored",
    "/workflows/cancel?key=workflow:visit:nope": "no workflow is stored under the key 'workflow:visit:nope'",
    # A key stored for another kind names no workflow either.
    "/workflows/cancel?key=continuous:refresher:user-1": "no workflow is stored under the key",
    "/jobs/nope/bogus": "no action 'bogus' on jobs",
    "/cron/nightly/bogus": "no action 'bogus' on cron jobs",
    "/dead-letters/nope/bogus": "no action 'bogus' on dead letters",
}


def test_an_action_on_what_is_not_stored_is_a_404_and_one_its_state_refuses_a_409(db: Built) -> None:
    origin = {"origin": "http://dash.test"}

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        application = app(**where(db), token=TOKEN, clock=AT_5M)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as c:
            assert (await c.post("/login", data={"token": TOKEN}, headers=origin)).status_code == 303
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', (await c.get("/cron")).text)
            assert csrf is not None
            form = {"headers": origin, "data": {"csrf": csrf.group(1)}}
            missing = [await c.post(url, **form) for url in MISSING_ACTIONS]
            refused = [
                await c.post(f"/jobs/{db.completed}/retry", **form),  # only a failed or cancelled job is retried
                await c.post(f"/jobs/{db.completed}/cancel", **form),  # ended: nothing to cancel, done
            ]
        await application.state.dashboard.aclose()
        return missing, refused

    missing, refused = trio.run(scenario)
    for (url, message), page in zip(MISSING_ACTIONS.items(), missing, strict=True):
        assert page.status_code == 404, (url, page.status_code, page.text[-400:])
        assert message in page.text.replace("&#39;", "'"), (url, page.text[-400:])
    retried, cancelled = refused
    assert retried.status_code == 409 and "only a failed or cancelled job can be retried" in retried.text
    assert cancelled.status_code == 303  # a cancel of an ended job changes nothing, and says so
    gets = get(app(**where(db), clock=AT_5M), "/jobs/nope", "/dead-letters/nope", "/workflow?key=workflow:visit:nope")
    assert [page.status_code for page in gets] == [404, 404, 404]  # the pages of what the actions named


def test_a_filter_given_a_value_it_does_not_take_is_a_400_naming_what_it_takes(db: Built) -> None:
    cases = {
        "/jobs?status=bogus": "status 'bogus' is not one of: pending, running, completed, failed, cancelled",
        "/jobs?limit=lots": "limit 'lots' is not a number of rows from 1 to 500",
        "/jobs?limit=0": "limit '0' is not a number of rows from 1 to 500",
        "/jobs?limit=501": "limit '501' is not a number of rows from 1 to 500",
        "/jobs?limit=1_0": "limit '1_0' is not a number of rows from 1 to 500",  # int() reads 10
        # int() raises ValueError past 4,300 digits: a 400 still, never the exception out of the app
        "/jobs?limit=" + "1" * 5000: "limit '111111111111111111111111111111111111111",
        "/instances?kind=bogus": "kind 'bogus' is not one of: continuous, debounce, task, workflow",
        "/instances?limit=-1": "limit '-1' is not a number of rows from 1 to 500",
        "/workflows?status=bogus": (
            "status 'bogus' is not one of: running, sleeping, waiting, completed, failed, cancelled"
        ),
        "/workflows?limit=x": "limit 'x' is not a number of rows from 1 to 500",
        "/dead-letters?kind=bogus": "kind 'bogus' is not one of: job, debounce, continuous, task",
        "/dead-letters?limit=0": "limit '0' is not a number of rows from 1 to 500",
    }
    pages = get(app(**where(db), clock=AT_5M), *cases, "/jobs?status=", "/jobs?status=failed&limit=500")
    for (url, message), page in zip(cases.items(), pages, strict=False):
        assert page.status_code == 400, url
        assert message in page.text.replace("&#39;", "'"), (url, page.text)
    empty, fine = pages[-2:]
    assert empty.status_code == 200 and fine.status_code == 200  # empty means any; 500 is allowed
    assert db.failed in fine.text and db.completed not in fine.text


def shout(params: Greet, ctx: djobs.JobContext) -> None:
    raise RuntimeError(f"cannot shout {params.name}")


shouter = djobs.Job.make("shout", params=Greet, execute=shout, max_attempts=1)


def test_the_dead_letters_page_lists_filters_pages_and_shows_one(db: Built) -> None:
    pages = get(
        app(**where(db), clock=AT_5M),
        "/dead-letters",
        "/dead-letters?kind=job&name=greet",
        "/dead-letters?kind=debounce",
        "/dead-letters?name=nobody",
        "/dead-letters?limit=1",
        f"/dead-letters?limit=1&after={db.failed}",
        f"/dead-letters/{db.failed}",
        "/dead-letters/nope",
    )
    listing, by_kind_and_name, debounce, nobody, first, after, one, missing = pages
    assert all(p.status_code == 200 for p in pages[:-1]), [p.status_code for p in pages]
    assert re.findall(r'class="letter" href="/dead-letters/([^"]+)"', listing.text) == [db.failed]
    assert "retry_exhausted: gave up after 1 attempt(s)" in listing.text
    assert re.findall(r'class="letter" href="/dead-letters/([^"]+)"', by_kind_and_name.text) == [db.failed]
    for page in (debounce, nobody, after):
        assert "no dead letters match" in page.text and db.failed not in page.text
    # The next page's link: the letter's cursor (its time, the separator, its id), so the next
    # page goes on from it even once the letter is retried or discarded.
    assert re.search(rf"after=\d+%1F{re.escape(db.failed)}", first.text) and "limit=1" in first.text
    assert "no greeting for fail" in one.text and f'href="/jobs/{db.failed}"' in one.text
    assert '<pre id="payload">{\n  &#34;name&#34;: &#34;fail&#34;\n}</pre>' in one.text  # formatted JSON, escaped
    assert "2026-01-01" in one.text  # when it failed
    assert 'href="/dead-letters" class="on"' in one.text
    assert missing.status_code == 404 and "no dead letter with id" in missing.text
    for page in (listing, one):
        assert 'method="post"' not in page.text  # read-only without a token
    # Not a time before the separator: two minus signs (int() refuses them), or more milliseconds
    # than a 64-bit integer holds (the database driver refuses them): each a 400, never a 500.
    bad_afters = get(
        app(**where(db), clock=AT_5M),
        "/dead-letters?after=x%1Fy",
        f"/dead-letters?after=--5%1F{db.failed}",
        f"/dead-letters?after={'9' * 19}%1F{db.failed}",
        f"/dead-letters?after={'9' * 20}%1F{db.failed}",
    )
    for bad_after in bad_afters:
        assert bad_after.status_code == 400 and "neither a letter id nor a page" in bad_after.text


@pytest.mark.parametrize("verb", ["retry", "discard"])
def test_dead_letter_actions_need_the_token_and_change_storage(db: Built, verb: str) -> None:
    origin = {"origin": "http://dash.test"}
    action = f"/dead-letters/{db.failed}/{verb}"

    async def letter_and_job() -> tuple[object, str]:
        async with open_existing(where(db)["db"], schema=where(db)["schema"]) as opened:
            letter = await opened.storage.get_dead_letter(db.failed)  # type: ignore[attr-defined]
            job = await opened.storage.get_job(db.failed)
        assert job is not None
        return letter, job.status

    async def scenario() -> None:
        [refused] = await fetch(app(**where(db), clock=AT_5M), ("POST", action, {"headers": origin}))
        assert refused.status_code == 403 and "read-only" in refused.text
        application = app(**where(db), token=TOKEN, clock=AT_5M)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as c:
            assert (await c.post(action, headers=origin)).status_code == 403  # not logged in
            assert (await c.post("/login", data={"token": TOKEN}, headers=origin)).status_code == 303
            page = await c.get(f"/dead-letters/{db.failed}")
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
            assert csrf is not None and 'value="retry"' in page.text and 'value="discard"' in page.text
            assert (await c.post(action, headers=origin)).status_code == 403  # no CSRF token
            forged = await c.post(action, headers={"origin": "http://evil.test"}, data={"csrf": csrf.group(1)})
            assert forged.status_code == 403
            letter, status = await letter_and_job()
            assert letter is not None and status == "failed"  # nothing refused changed anything
            done = await c.post(action, headers=origin, data={"csrf": csrf.group(1)})
            assert done.status_code == 303 and done.headers["location"].startswith("/dead-letters?done=")
            assert "no dead letters match" in (await c.get(done.headers["location"])).text
            again = await c.post(action, headers=origin, data={"csrf": csrf.group(1)})
            assert again.status_code == 404 and "no dead letter with id" in again.text  # gone, as its GET says
        await application.state.dashboard.aclose()
        letter, status = await letter_and_job()
        assert letter is None
        assert status == ("pending" if verb == "retry" else "failed")  # a discarded letter's job row stays

    trio.run(scenario)


def test_what_a_dead_letter_holds_is_escaped(db: Built) -> None:
    async def fail_hostile() -> str:
        storage = djobs.sqlite(db.path) if len(db.args) == 2 else djobs.postgres(db.args[1], schema=db.args[3])
        async with open_test_engine([shouter], storage=storage) as engine:
            client = engine.client.for_tenant("<b>acme</b>")
            job_id = success(await client.job(shouter).now(Greet("<script>alert(1)</script>"))).job_id
            await engine.wait_idle()
        assert job_id is not None
        return job_id

    hostile = trio.run(fail_hostile, clock=trio.testing.MockClock(autojump_threshold=0))
    listing, page = get(app(**where(db), clock=AT_5M), "/dead-letters?tenant=<b>acme</b>", f"/dead-letters/{hostile}")
    assert page.status_code == 200 and hostile in listing.text and db.failed not in listing.text
    for text in (listing.text, page.text):
        assert "<script>alert" not in text and "<b>acme" not in text and "&lt;b&gt;acme&lt;/b&gt;" in text
    assert "cannot shout &lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in page.text


def test_bidirectional_controls_in_ids_tenants_and_errors_show_as_stand_ins(tmp_path: Path) -> None:
    # U+202E showed the rest of its cell reversed (an id "invoice-\u202egpj.exe" read "invoice-exe.jpg");
    # every value a page writes now shows it, and the other controls, as the CLI and the log lines do.
    path = tmp_path / "jobs.db"

    async def fill() -> str:
        async with djobs.open_engine([shouter], storage=djobs.sqlite(path), worker=None) as engine:
            run = success(await engine.client.job(shouter).now(Greet("\u202egpj.exe"), tenant_id="acme\u2066"))
            assert run.job_id is not None  # persisted
            return run.job_id

    job_id = trio.run(fill)
    listing, page = get(app(str(path)), "/jobs?status=failed", f"/jobs/{job_id}")
    for shown in (listing, page):
        assert shown.status_code == 200 and "\u202e" not in shown.text and "\u2066" not in shown.text
        assert "cannot shout &lt;U+202E&gt;gpj.exe" in shown.text  # the error message
        assert "acme&lt;U+2066&gt;" in shown.text  # the tenant id
