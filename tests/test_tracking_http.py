"""HttpBatchTracker against a real HTTP server on loopback, fed by a real engine.

These tests use real sockets, so they run on Trio's real clock (no autojump):
short flush intervals and timeouts keep them fast, and ``trio.fail_after``
turns a hang into a quick failure.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import h11
import msgspec
import pytest
import trio

import djobs
from djobs.testing import open_test_engine
from djobs.tracking import HttpBatchTracker, TrackedEvent

KEY = "sk-do-not-log-me"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class Collector:
    """A minimal HTTP/1.1 telemetry collector on 127.0.0.1 (h11 over trio.serve_listeners).

    ``statuses`` are answered in turn (then ``status``); with ``hang`` set, requests get no answer.
    """

    status: int = 200
    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    hanging: int = 0
    _scope: trio.CancelScope | None = None
    _stopped: trio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """The events of every request answered with a 2xx, in arrival order."""
        return [e for r in self.requests if 200 <= r.status < 300 for e in r.body["events"]]

    def accepted_of(self, type: str) -> list[dict[str, Any]]:
        return [e for e in self.accepted if e["type"] == type]

    async def start(self, nursery: trio.Nursery) -> None:
        # The same port on a restart (SO_REUSEADDR is set by trio), so the tracker finds it again.
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        scope, stopped = trio.CancelScope(), trio.Event()
        self._scope, self._stopped = scope, stopped

        async def serve() -> None:
            try:
                with scope:
                    await trio.serve_listeners(self._handle, listeners)
            finally:
                stopped.set()

        nursery.start_soon(serve)

    async def stop(self) -> None:
        """Close the listener and every connection: the port now refuses connections."""
        assert self._scope is not None and self._stopped is not None
        self._scope.cancel()
        await self._stopped.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # ConnectionClosed: the client went away between requests
                        return
                assert request is not None
                status = self.statuses.pop(0) if self.statuses else self.status
                self.requests.append(
                    Request(
                        request.method.decode(),
                        request.target.decode(),
                        {k.decode(): v.decode() for k, v in request.headers},
                        json.loads(body),
                        status,
                    )
                )
                if self.hang:
                    self.hanging += 1
                    await trio.sleep_forever()
                payload = b"{}"
                await stream.send_all(
                    conn.send(
                        h11.Response(
                            status_code=status,
                            headers=[("content-type", "application/json"), ("content-length", str(len(payload)))],
                        )
                    )
                )
                await stream.send_all(conn.send(h11.Data(data=payload)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return


async def wait_until(predicate: Callable[[], bool], what: str, seconds: float = 5) -> None:
    """Poll `predicate` on the real clock; fail the test after `seconds`."""
    with trio.move_on_after(seconds):
        while not predicate():  # noqa: ASYNC110  (other tasks and a socket change the state; no one event to wait on)
            await trio.sleep(0.005)
        return
    pytest.fail(f"timed out after {seconds} s waiting until {what}")


class Beat(msgspec.Struct):
    n: int = 0


def beat_job(runs: list[float], every: str = "50 ms") -> djobs.Continuous[Beat]:
    """A job that runs every `every` and records when (Trio's clock) in `runs`."""

    def tick(ctx: djobs.ContinuousContext[Beat]) -> None:
        runs.append(trio.current_time())
        ctx.set_state(Beat(ctx.state.n + 1))

    return djobs.Continuous.make("beat", state=Beat, schedule=djobs.every(every), execute=tick)


def tracker_for(collector: Collector, **options: Any) -> HttpBatchTracker:
    settings: dict[str, Any] = {
        "batch_size": 5,
        "flush_interval": "20 ms",
        "timeout": "500 ms",
        "backoff": djobs.Backoff.fixed("20 ms"),
        "close_timeout": "2 seconds",
        **options,
    }
    return HttpBatchTracker(collector.url, env="test", service_key=KEY, **settings)


def event(n: int) -> TrackedEvent:
    return TrackedEvent(
        type="job.executed",
        instance_id=f"continuous:beat:{n}",
        job_type="continuous",
        job_name="beat",
        at=datetime(2026, 1, 1, tzinfo=UTC),
        data={"run_count": n},
    )


@pytest.mark.trio
async def test_batches_arrive_with_the_events_env_and_the_key_in_a_header(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="djobs")
    caplog.set_level(logging.DEBUG, logger="httpx")
    caplog.set_level(logging.DEBUG, logger="httpcore")
    runs: list[float] = []
    job = beat_job(runs)
    collector = Collector()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await collector.start(nursery)
            tracker = tracker_for(collector)
            async with open_test_engine([job], tracker=tracker) as engine:
                await engine.client.continuous(job).start(id="a", input=Beat())
                await wait_until(lambda: len(collector.accepted_of("job.executed")) >= 6, "6 runs are delivered")
            nursery.cancel_scope.cancel()

    assert collector.requests, "nothing was posted"
    for request in collector.requests:
        assert (request.method, request.path) == ("POST", "/events")
        assert request.headers["x-service-key"] == KEY
        assert request.headers["content-type"] == "application/json"
        assert 1 <= len(request.body["events"]) <= 5  # batch_size
    started, *rest = collector.accepted
    assert started["type"] == "job.started"
    assert started["next_run_at"]
    executed = collector.accepted_of("job.executed")
    for e in [started, *rest]:
        assert e["instance_id"] == "continuous:beat:a"
        assert (e["job_type"], e["job_name"], e["env"]) == ("continuous", "beat", "test")
        assert datetime.fromisoformat(e["at"]) >= datetime(2026, 1, 1, tzinfo=UTC)
        assert "service_key" not in e  # the key travels in the header only
    assert [e["run_count"] for e in executed] == list(range(1, len(runs) + 1))  # close flushed the rest
    assert all(e["attempt"] == 1 and isinstance(e["duration_ms"], float) for e in executed)
    assert (tracker.dropped, tracker.pending) == (0, 0)
    assert KEY not in repr(tracker)
    assert KEY not in caplog.text


@pytest.mark.trio
@pytest.mark.parametrize("outage", ["refusing connections", "answering 500"])
async def test_a_server_down_for_a_while_loses_nothing_within_the_buffer(
    outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="djobs.tracking")
    runs: list[float] = []
    job = beat_job(runs)
    collector = Collector()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await collector.start(nursery)
            if outage == "refusing connections":
                await collector.stop()
            else:
                collector.status = 500
            tracker = tracker_for(collector)
            async with open_test_engine([job], tracker=tracker) as engine:
                await engine.client.continuous(job).start(id="a", input=Beat())
                await wait_until(lambda: len(runs) >= 8, "8 runs happened while the server was down")
                assert collector.accepted == []
                assert tracker.pending > 5  # more than one batch is being held
                if outage == "refusing connections":
                    await collector.start(nursery)
                else:
                    assert len(collector.requests) >= 2  # the failed batch was retried
                    collector.status = 200
                await wait_until(lambda: len(collector.accepted_of("job.executed")) >= 8, "the backlog arrives")
            nursery.cancel_scope.cancel()

    executed = [e["run_count"] for e in collector.accepted_of("job.executed")]
    assert executed == list(range(1, len(runs) + 1))  # in order, no gap, nothing twice
    assert collector.accepted_of("job.started") != []
    assert (tracker.dropped, tracker.pending) == (0, 0)
    # One warning when the outage starts, not one per retry; the recovery is logged too.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not deliver" in warnings[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text


@pytest.mark.trio
async def test_closing_the_engine_flushes_what_the_tracker_holds() -> None:
    runs: list[float] = []
    job = beat_job(runs)
    collector = Collector()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await collector.start(nursery)
            # Neither a full batch nor the interval will send anything: only the close can.
            tracker = tracker_for(collector, batch_size=1000, flush_interval="1 hour")
            async with open_test_engine([job], tracker=tracker) as engine:
                await engine.client.continuous(job).start(id="a", input=Beat())
                await wait_until(lambda: len(runs) >= 3, "3 runs")
                assert collector.requests == []
            assert len(collector.requests) == 1
            nursery.cancel_scope.cancel()

    assert [e["run_count"] for e in collector.accepted_of("job.executed")] == list(range(1, len(runs) + 1))
    assert collector.accepted[0]["type"] == "job.started"
    assert (tracker.dropped, tracker.pending) == (0, 0)


@pytest.mark.trio
async def test_a_full_buffer_drops_counts_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="djobs.tracking")
    collector = Collector()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await collector.start(nursery)
            tracker = tracker_for(collector, max_buffer=3)
            for n in range(10):
                tracker.emit(event(n))
            assert (tracker.pending, tracker.dropped) == (3, 7)
            full = [r for r in caplog.records if "full" in r.getMessage()]
            assert len(full) == 1 and full[0].levelno == logging.WARNING
            # Never run by an engine, aclose still delivers what was kept: the first three, in order.
            await tracker.aclose()
            nursery.cancel_scope.cancel()

    assert [e["instance_id"] for e in collector.accepted] == [f"continuous:beat:{n}" for n in range(3)]
    assert (tracker.pending, tracker.dropped) == (0, 7)


@pytest.mark.trio
async def test_a_slow_server_never_delays_the_job() -> None:
    runs: list[float] = []
    job = beat_job(runs)
    collector = Collector(hang=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await collector.start(nursery)
            # Every post hangs for the whole test (timeout 30 s); the close gives up after 100 ms.
            tracker = tracker_for(collector, batch_size=1, timeout="30 seconds", close_timeout="100 ms")
            async with open_test_engine([job], tracker=tracker) as engine:
                await engine.client.continuous(job).start(id="a", input=Beat())
                await wait_until(lambda: len(runs) >= 12, "12 runs while posts hang", seconds=3)
                assert collector.hanging == 1  # one post in flight, hung, the whole time
                closing = trio.current_time()
            closed_in = trio.current_time() - closing
            nursery.cancel_scope.cancel()

    gaps = [b - a for a, b in itertools.pairwise(runs)]
    # On schedule: every 50 ms (with slack for a loaded machine), never stalled behind a post.
    assert max(gaps) < 0.2, gaps
    assert sum(gaps) / len(gaps) < 0.08, gaps
    assert closed_in < 1.5
    # What could not be delivered is counted, not lost silently, and the close did not hang.
    assert tracker.pending == 0
    assert tracker.dropped == 1 + len(runs)  # job.started and every job.executed


@pytest.mark.trio
async def test_a_rejected_batch_is_dropped_and_later_ones_still_arrive(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="djobs.tracking")
    collector = Collector(statuses=[400])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await collector.start(nursery)
            tracker = tracker_for(collector, batch_size=1)
            tracker.emit(event(0))
            tracker.emit(event(1))
            await tracker.aclose()
            nursery.cancel_scope.cancel()

    assert [r.status for r in collector.requests] == [400, 200]  # a 400 is not retried
    assert [e["instance_id"] for e in collector.accepted] == ["continuous:beat:1"]
    assert tracker.dropped == 1
    assert "HTTP 400" in caplog.text and KEY not in caplog.text


@pytest.mark.trio
async def test_max_retries_gives_a_failing_batch_up() -> None:
    collector = Collector(statuses=[503, 503])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await collector.start(nursery)
            tracker = tracker_for(collector, batch_size=1, max_retries=1)
            tracker.emit(event(0))
            tracker.emit(event(1))
            await tracker.aclose()
            nursery.cancel_scope.cancel()

    assert [r.status for r in collector.requests] == [503, 503, 200]
    assert [e["instance_id"] for e in collector.accepted] == ["continuous:beat:1"]
    assert tracker.dropped == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(djobs.ValidationError, match="batch_size"):
        HttpBatchTracker("http://127.0.0.1:9/", env="t", service_key=KEY, batch_size=0)
    with pytest.raises(djobs.ValidationError, match="flush_interval"):
        HttpBatchTracker("http://127.0.0.1:9/", env="t", service_key=KEY, flush_interval="soon")


def test_importing_djobs_needs_neither_extra() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["httpx"] = None  # as if the extras were not installed
        sys.modules["opentelemetry"] = None
        import djobs, djobs.tracking
        for make, extra in [(lambda: djobs.tracking.HttpBatchTracker("http://x", "e", "k"), "djobs-trio[http]"),
                            (lambda: djobs.tracking.OpenTelemetryTracker(), "djobs-trio[otel]")]:
            try:
                make()
            except ImportError as exc:
                assert extra in str(exc), exc
            else:
                raise AssertionError("no ImportError")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_service_key_no_header_can_carry_is_refused_when_the_tracker_is_built() -> None:
    for bad in (KEY + "\n", " " + KEY, KEY + "\r\nx-evil: 1", "", "clé", KEY + "\x00"):
        with pytest.raises(djobs.ValidationError, match="service_key") as caught:
            HttpBatchTracker("http://127.0.0.1:1/", env="test", service_key=bad)
        assert KEY not in caught.value.message  # the key is a credential: never in a message
    with pytest.raises(djobs.ValidationError, match="service_key"):
        HttpBatchTracker("http://127.0.0.1:1/", env="test", service_key=None)  # type: ignore[arg-type]


@pytest.mark.trio
async def test_a_request_the_transport_refuses_is_dropped_not_retried_forever_and_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx

    caplog.set_level(logging.DEBUG, logger="djobs")
    collector = Collector()
    secret = "extra-secret-value"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await collector.start(nursery)
            # A header the application set on its own client that no HTTP request can carry.
            client = httpx.AsyncClient(headers={"x-extra": secret + "\n"})
            tracker = tracker_for(collector, batch_size=1, client=client)
            tracker.emit(event(0))
            tracker.emit(event(1))
            await tracker.aclose()
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert tracker.dropped == 2 and tracker.pending == 0  # given up at once: retrying cannot fix it
    assert "LocalProtocolError" in caplog.text
    assert secret not in caplog.text and KEY not in caplog.text


@pytest.mark.trio
async def test_a_relative_endpoint_goes_to_the_base_url_of_the_client_passed() -> None:
    import httpx

    posted: list[str] = []

    def collect(request: httpx.Request) -> httpx.Response:
        posted.append(str(request.url))
        return httpx.Response(200)

    transport = httpx.MockTransport(collect)
    async with httpx.AsyncClient(base_url="https://collector.test/api", transport=transport) as client:
        tracker = HttpBatchTracker("/v1/events", env="test", service_key=KEY, client=client)
        tracker.emit(event(0))
        with trio.fail_after(10):
            await tracker.aclose()
    assert posted == ["https://collector.test/api/v1/events"]
    # With no client, or one with no http(s) base_url, a relative endpoint names nowhere.
    async with httpx.AsyncClient(transport=transport) as bare:
        for client_or_none in (None, bare):
            with pytest.raises(djobs.ValidationError, match=r"expected an http:// or https:// URL"):
                HttpBatchTracker("/v1/events", env="test", service_key=KEY, client=client_or_none)
    async with httpx.AsyncClient(base_url="https://collector.test", transport=transport) as based:
        for other_scheme in ("ftp://collector.test/e", "mailto:ops@collector.test"):
            with pytest.raises(djobs.ValidationError, match=r"expected an http:// or https:// URL"):
                HttpBatchTracker(other_scheme, env="test", service_key=KEY, client=based)


def test_an_endpoint_no_request_can_reach_is_refused_when_the_tracker_is_built() -> None:
    # Each was accepted, then every batch was dropped ("UnsupportedProtocol", "InvalidURL") for the
    # life of the application.
    for endpoint, problem in (
        ("http://", "names no host"),
        ("https://:443/v1/events", "names no host"),
        ("http://[::1/x", "not a URL httpx can send to"),
        ("https://collector.test/v1/events\n", r"holds a control character \('\\n' at index 32\)"),
        ("https://collector.test/v1/\nevents", "holds a control character"),
        ("https://collector.test/v1\x7fevents", "control character"),
        ("https://collector.test/v1\x85events", "control character"),  # C1: mojibake, sent as %C2%85
        ("https://collector.test/v1/events ", r"ends with whitespace \(' '\)"),  # sent to /v1/events%20
        ("https://collector.test/v1/events\xa0", "ends with whitespace"),
        (" https://collector.test/v1/events", "begins or ends with whitespace"),
        ("https://collector test/v1/events", "the host 'collector test' holds whitespace"),
        ("http://127.0.0.1:99999/x", "port 99999 is not a TCP port"),
        ("http://127.0.0.1:0/x", "port 0 is not a TCP port"),
    ):
        with pytest.raises(djobs.ValidationError, match=problem):
            HttpBatchTracker(endpoint, env="test", service_key=KEY)
    for fine in ("https://collector.test/v1/events?env=a#x", "http://[::1]:8080/e", "http://127.0.0.1:65535/"):
        assert HttpBatchTracker(fine, env="test", service_key=KEY).endpoint == fine


@pytest.mark.trio
async def test_an_endpoint_with_whitespace_inside_its_path_or_query_is_taken_and_posted_to() -> None:
    """httpx percent-encodes a space (an NBSP, a U+2028) inside the path or query, and the batch
    reaches the collector: such an endpoint worked and is not refused as unreachable."""
    import httpx

    posted: list[bytes] = []

    def collect(request: httpx.Request) -> httpx.Response:
        posted.append(bytes(request.url.raw_path))
        return httpx.Response(200)

    endpoints = {
        "https://collector.test/ingest v2": b"/ingest%20v2",
        "https://collector.test/ingest?env=a b": b"/ingest?env=a%20b",
        "https://collector.test/a\xa0b\u2028c": b"/a%C2%A0b%E2%80%A8c",
    }
    async with httpx.AsyncClient(transport=httpx.MockTransport(collect)) as client:
        for endpoint in endpoints:
            tracker = HttpBatchTracker(endpoint, env="test", service_key=KEY, client=client)
            tracker.emit(event(0))
            with trio.fail_after(10):
                await tracker.aclose()
    assert posted == list(endpoints.values())


@pytest.mark.trio
async def test_a_short_service_key_is_redacted_where_it_is_quoted_not_inside_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"[Errno -2] Name or service not known (key k, sent b'{'k'}')")

    caplog.set_level(logging.DEBUG, logger="djobs")
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        tracker = HttpBatchTracker(
            "https://collector.test/e", env="test", service_key="k", client=client, max_retries=0
        )
        tracker.emit(event(0))
        with trio.fail_after(10):
            await tracker.aclose()
    assert "Name or service not known (key ***, sent b'***')" in caplog.text, caplog.text
