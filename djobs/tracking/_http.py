"""`HttpBatchTracker`: telemetry posted as JSON batches (optional extra ``djobs-trio[http]``).

The engine's tasks call `emit`, which only appends to a bounded buffer. One
sender task (`run`, started by the engine) posts what is buffered with
``httpx.AsyncClient`` (httpx runs on Trio through anyio) whenever
``batch_size`` events are waiting or ``flush_interval`` has passed. Events
leave the buffer only once the server has accepted them, so a server that is
down or slow for a while costs nothing but buffer space; when the buffer is
full, new events are dropped and counted. `aclose` delivers what is left,
within ``close_timeout``.
"""

from __future__ import annotations

import itertools
import logging
import re
import unicodedata
import urllib.parse
from collections import deque
from typing import TYPE_CHECKING, Any, Final, final

import msgspec
import trio

from .._durations import DurationLike, check_at_least
from .._errors import ValidationError, describe, safe_repr
from .._input import MAX_LIMIT, os_text_problem
from .._printable import printable
from .._retry import Backoff
from ._base import TRACKER_CLOSE_LIMIT_S, TrackedEvent

if TYPE_CHECKING:
    import httpx

__all__ = ["SERVICE_KEY_HEADER", "HttpBatchTracker"]

#: The request header that carries the service key.
SERVICE_KEY_HEADER: Final = "x-service-key"

_log = logging.getLogger("djobs.tracking.http")


def _as_text(value: Any) -> str:
    # A data field of a type JSON cannot express is sent as its text rather than failing its batch.
    return str(value)


_encoder: Final = msgspec.json.Encoder(enc_hook=_as_text)

# Client errors that retrying cannot fix (a malformed batch, a wrong key): the batch is dropped so it
# does not block every later event. 408 and 429 mean "try again later" and are retried.
_RETRIED_CLIENT_ERRORS: Final = frozenset({408, 425, 429})


def _require_httpx() -> None:
    try:
        import httpx  # noqa: F401  (only checking that the extra is installed)
    except ImportError as exc:
        raise ImportError(
            "HttpBatchTracker needs httpx, which the http extra installs: pip install 'djobs-trio[http]'"
        ) from exc


def _transient(exc: Exception) -> bool:
    """Whether a transport error may pass by itself (the network, the server), so a retry may succeed."""
    import httpx

    retried = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError, OSError)
    return isinstance(exc, retried)


def _relative_to_base(endpoint: str, client: httpx.AsyncClient | None) -> bool:
    """Whether `endpoint` is a relative URL that `client` resolves against its http(s) ``base_url``."""
    import httpx

    if client is None or client.base_url.scheme not in ("http", "https"):
        return False
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL:
        return False
    return url.is_relative_url and not url.scheme  # ("mailto:x" parses as relative, with a scheme)


def _stray_characters(endpoint: str) -> str | None:
    """Why `endpoint` holds characters no working URL does, or ``None``: a control character
    anywhere (httpx refuses the ASCII ones at every request; a C1 control is mojibake) or
    whitespace at either end (a line read from a file: a trailing space or NBSP is sent
    percent-encoded, to a path the collector does not serve). Whitespace inside the path or
    query is taken: httpx sends it percent-encoded (``/ingest v2`` as ``/ingest%20v2``)."""
    at = next((i for i, c in enumerate(endpoint) if unicodedata.category(c) == "Cc"), None)
    if at is not None:
        return (
            f"holds a control character ({endpoint[at]!r} at index {at}), which no request can carry;"
            " strip it (a URL read from a file often ends in a newline)"
        )
    if endpoint != endpoint.strip():
        end = endpoint[0] if endpoint[:1].isspace() else endpoint[-1]
        return f"begins or ends with whitespace ({end!r}); strip it (a URL read from a file often ends in one)"
    return None


def _unreachable(endpoint: str, client: httpx.AsyncClient | None) -> str | None:
    """Why no request can be posted to `endpoint` (an http(s) URL, or one relative to `client`'s
    ``base_url``), or ``None``: what httpx cannot parse (httpx's own parsing decides, as it will
    for every request), no host, a host that holds whitespace (no name server resolves it), no
    TCP port. Each was accepted and then dropped every batch for the life of the application."""
    import httpx

    try:
        url = httpx.URL(endpoint)
        if client is not None and url.is_relative_url:
            url = client.base_url.join(url)
    except httpx.InvalidURL as exc:
        return f"not a URL httpx can send to ({exc})"
    if not url.host:
        return "the URL names no host (expected http://host/path or https://host/path)"
    if any(c.isspace() for c in urllib.parse.unquote(url.host)):
        return f"the host {urllib.parse.unquote(url.host)!r:.80} holds whitespace, which no host name can"
    if url.port is not None and not 1 <= url.port <= 65535:
        return f"port {url.port} is not a TCP port (1 to 65535)"
    return None


def _header_value(value: object, what: str) -> str:
    """`value` if an HTTP header can carry it: visible ASCII, single spaces inside. The value is
    never part of the message (it is a credential): a trailing newline read from a file is the usual culprit."""
    if not isinstance(value, str):
        raise ValidationError(f"HttpBatchTracker({what}=...): expected a str, got {type(value).__name__}")
    if not re.fullmatch(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*", value):
        raise ValidationError(
            f"HttpBatchTracker({what}=...): the value is empty or holds a character an HTTP header cannot "
            "carry (whitespace at either end, a newline, a control or non-ASCII character); strip it "
            "(a key read from a file often ends in a newline)"
        )
    return value


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ValidationError(f"HttpBatchTracker({what}={safe_repr(value):.40}): expected an int from 1 to {MAX_LIMIT}")
    return value


@final
class HttpBatchTracker:
    """A tracker that posts events to an HTTP endpoint in JSON batches.

    `emit` never blocks, awaits or raises: it appends to a buffer of at most
    ``max_buffer`` events. The engine starts the sender (`run`) when it opens
    and calls `aclose` when it closes. A failed post (connection refused,
    timeout, HTTP 5xx, 408 or 429) is retried with ``backoff`` and its events
    stay buffered, in order; a batch the server rejects with another 4xx is
    dropped and counted, since sending it again cannot succeed. Each request
    carries the service key in the ``x-service-key`` header; the key is never
    logged and is not part of the ``repr``. The wire format is described in
    the telemetry guide.

    Args:
        endpoint: The http:// or https:// URL batches are posted to; with a `client` whose
            ``base_url`` is such a URL, a relative one (``"/v1/events"``) resolved against it, as httpx does.
        env: The environment name sent with every event (``"production"``).
        service_key: The key identifying this service to the collector; sent
            as the ``x-service-key`` header of every request.
        batch_size: The most events in one request; a full batch is sent at once.
        flush_interval: How long an event may wait for its batch to fill (at
            least 1 millisecond: 0 would make the sender spin).
        max_buffer: The most events held (waiting or being retried); more are dropped.
        timeout: The limit of one request (connect, send, wait for the
            answer); at least 1 millisecond.
        max_retries: How many times a failing batch is retried before it is
            dropped; ``None`` (the default) retries for as long as it takes,
            the buffer being the bound.
        backoff: The wait between failed tries of a batch (default:
            exponential from 0.5 seconds up to 30 seconds).
        close_timeout: How long `aclose` may take to deliver what is left
            (at most 30 seconds, the engine's bound on a tracker's close).
        client: An ``httpx.AsyncClient`` to send with (for proxies, TLS
            settings or a mock transport); by default the tracker makes one
            and closes it in `aclose`. A client you pass stays yours to close.

    Raises:
        ImportError: httpx is not installed (``pip install 'djobs-trio[http]'``).
        ValidationError: A size or duration is not valid; `endpoint` is not an http(s) URL (nor,
            with a `client` whose ``base_url`` is one, a relative URL httpx resolves against it), holds a
            NUL or a lone surrogate, a control character anywhere (a trailing newline), whitespace at
            either end or in the host, is not a URL httpx parses (``"http://[::1/x"``), names no host
            (``"http://"``) or a port outside 1 to 65535 (whitespace inside the path or query is
            taken: httpx sends it percent-encoded); `env` is not a str, or holds a lone
            surrogate (no JSON body can); `service_key` is not a valid header value; a `backoff` that is
            no `Backoff`, a `client` that is no ``httpx.AsyncClient``.

    Example:
        ```python
        tracker = djobs.tracking.HttpBatchTracker(
            "https://telemetry.example.com/v1/events", env="production", service_key=os.environ["DJOBS_KEY"])
        async with djobs.open_engine(jobs, tracker=tracker) as engine:
            ...
        ```
    """

    def __init__(
        self,
        endpoint: str,
        env: str,
        service_key: str,
        *,
        batch_size: int = 100,
        flush_interval: DurationLike = "5 seconds",
        max_buffer: int = 10_000,
        timeout: DurationLike = "10 seconds",
        max_retries: int | None = None,
        backoff: Backoff | None = None,
        close_timeout: DurationLike = "10 seconds",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        _require_httpx()
        if not isinstance(endpoint, str) or not endpoint:
            raise ValidationError(f"HttpBatchTracker(endpoint={safe_repr(endpoint)}): expected a URL")
        problem = os_text_problem(endpoint)
        if problem is not None:
            raise ValidationError(f"HttpBatchTracker(endpoint={safe_repr(endpoint):.80}): {problem}")
        stray = _stray_characters(endpoint)
        if stray is not None:
            raise ValidationError(f"HttpBatchTracker(endpoint={safe_repr(endpoint):.80}): {stray}")
        import httpx  # here: the module imports without the http extra

        if client is not None and not isinstance(client, httpx.AsyncClient):
            raise ValidationError(
                f"HttpBatchTracker(client={safe_repr(client):.80}): expected None or an httpx.AsyncClient"
            )
        if not endpoint.lower().startswith(("http://", "https://")) and not _relative_to_base(endpoint, client):
            raise ValidationError(
                f"HttpBatchTracker(endpoint={safe_repr(endpoint):.80}): expected an http:// or https:// URL"
                " (or a path relative to the http(s) base_url of the client passed)"
            )
        unreachable = _unreachable(endpoint, client)
        if unreachable is not None:
            raise ValidationError(f"HttpBatchTracker(endpoint={safe_repr(endpoint):.80}): {unreachable}")
        self.endpoint = endpoint
        if not isinstance(env, str):
            raise ValidationError(f"HttpBatchTracker(env=...): expected a str, got {type(env).__name__}")
        try:
            env.encode("utf-8")
        except UnicodeEncodeError as exc:  # no JSON body can carry it: every batch would be dropped
            raise ValidationError(
                f"HttpBatchTracker(env={safe_repr(env):.80}):"
                f" not valid UTF-8 (a lone surrogate at position {exc.start})"
            ) from None
        self.env = env
        service_key = _header_value(service_key, "service_key")
        forms = sorted({service_key, repr(service_key)[1:-1], repr(service_key.encode())[2:-1]}, key=len, reverse=True)
        self._key_forms = re.compile(rf"(?<![A-Za-z0-9])(?:{'|'.join(map(re.escape, forms))})(?![A-Za-z0-9])")
        self._batch_size = _positive_int(batch_size, "batch_size")
        self._max_buffer = _positive_int(max_buffer, "max_buffer")
        if max_retries is not None and (
            isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_LIMIT
        ):
            raise ValidationError(
                f"HttpBatchTracker(max_retries={safe_repr(max_retries):.40}):"
                f" expected None or an int from 0 to {MAX_LIMIT}"
            )
        self._max_retries = max_retries
        least = "HttpBatchTracker flush_interval", "HttpBatchTracker timeout", "HttpBatchTracker close_timeout"
        self._flush_interval = check_at_least(flush_interval, least[0], 1, "1 millisecond") / 1000
        self._timeout = check_at_least(timeout, least[1], 1, "1 millisecond") / 1000
        self._close_timeout = check_at_least(close_timeout, least[2], 0, "0") / 1000
        if self._close_timeout > TRACKER_CLOSE_LIMIT_S:
            raise ValidationError(
                f"HttpBatchTracker close_timeout must be at most {TRACKER_CLOSE_LIMIT_S} seconds (the engine"
                f" cancels a tracker's close after that), got {safe_repr(close_timeout):.80}"
            )
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ValidationError(
                f"HttpBatchTracker(backoff={safe_repr(backoff):.80}): expected None or a djobs.Backoff"
            )
        self._backoff = backoff or Backoff.exponential(base="500 ms", max="30 seconds")
        self._client = client
        self._own_client: httpx.AsyncClient | None = None
        self._headers = {"content-type": "application/json", SERVICE_KEY_HEADER: service_key}
        self._buffer: deque[TrackedEvent] = deque()
        self._dropped = 0
        self._full_warned = False
        self._failing = 0  # failed tries of the batch at the head of the buffer
        self._wake = trio.Event()
        self._closing = trio.Event()
        self._stopped = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._running = False

    def __repr__(self) -> str:
        # The service key is a credential: never part of the repr (reprs end up in logs).
        return (
            f"HttpBatchTracker(endpoint={self.endpoint!r}, env={self.env!r}, pending={len(self._buffer)}, "
            f"dropped={self._dropped})"
        )

    @property
    def dropped(self) -> int:
        """How many events were dropped: buffer full, rejected by the server, or undelivered at close."""
        return self._dropped

    @property
    def pending(self) -> int:
        """How many events are buffered (waiting for their batch, or being retried)."""
        return len(self._buffer)

    # -- the engine's side ------------------------------------------------------------

    def emit(self, event: TrackedEvent) -> None:
        """Buffer `event` for the next batch; drop it (counted) if the buffer is full."""
        if len(self._buffer) >= self._max_buffer:
            self._dropped += 1
            if not self._full_warned:
                # Once per episode, not per event: a full buffer during an outage would flood the log.
                self._full_warned = True
                _log.warning(
                    "telemetry buffer for %s is full (%d events): new events are dropped until it drains "
                    "(HttpBatchTracker.dropped counts them)",
                    self.endpoint,
                    self._max_buffer,
                )
            return
        self._buffer.append(event)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send batches until `aclose`; the engine starts this in its nursery.

        Raises:
            RuntimeError: The tracker is already running (one engine at a time).
        """
        if self._running:
            raise RuntimeError("this HttpBatchTracker is already running in another engine")
        self._running = True
        self._closing = trio.Event()
        self._stopped = trio.Event()
        self._scope = trio.CancelScope()
        client = self._http()
        task_status.started()
        try:
            with self._scope:
                await self._send_loop(client)
        except Exception:
            # A bug in the sender must not take the engine down: jobs go on, events pile up and are dropped.
            _log.exception("bug: the telemetry sender for %s stopped; events are no longer sent", self.endpoint)
        finally:
            self._running = False
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop the sender and deliver what is buffered, within ``close_timeout``.

        What cannot be delivered in time is dropped, counted and logged. Also
        works on a tracker no engine ran: it then posts the buffer itself.
        """
        deadline = trio.current_time() + self._close_timeout
        if self._running and self._scope is not None:
            # A post in flight may finish (until the deadline) rather than be cut off and sent twice.
            self._closing.set()
            self._wake.set()
            self._scope.deadline = min(self._scope.deadline, deadline)
            await self._stopped.wait()
        try:
            if self._buffer:
                with trio.move_on_at(deadline):
                    await self._drain(self._http())
            if self._buffer:
                lost = len(self._buffer)
                self._buffer.clear()
                self._dropped += lost
                _log.warning(
                    "closing: %d telemetry event(s) could not be delivered to %s in %.1f s",
                    lost,
                    self.endpoint,
                    self._close_timeout,
                )
        finally:
            own, self._own_client = self._own_client, None
            if own is not None:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + 1
                    await own.aclose()

    # -- sending ----------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is not None:
            return self._client
        if self._own_client is None:
            import httpx

            self._own_client = httpx.AsyncClient()
        return self._own_client

    async def _send_loop(self, client: httpx.AsyncClient) -> None:
        while True:
            if self._failing:
                # Back off; a full buffer does not hurry a retry to a server that is down.
                with trio.move_on_after(self._backoff.delay(self._failing).total_seconds()):
                    await self._closing.wait()
            else:
                with trio.move_on_after(self._flush_interval):
                    while len(self._buffer) < self._batch_size and not self._closing.is_set():
                        self._wake = trio.Event()
                        await self._wake.wait()
            if self._closing.is_set():
                return  # aclose delivers the rest
            if self._buffer:
                await self._send_batch(client)

    async def _drain(self, client: httpx.AsyncClient) -> None:
        while self._buffer:
            if not await self._send_batch(client):
                await trio.sleep(self._backoff.delay(self._failing).total_seconds())

    async def _send_batch(self, client: httpx.AsyncClient) -> bool:
        """Post the batch at the head of the buffer; whether it left the buffer."""
        batch = list(itertools.islice(self._buffer, self._batch_size))
        try:
            body = _encoder.encode({"events": [self._wire(e) for e in batch]})
        except Exception:
            _log.exception("bug: could not encode %d telemetry event(s); they are dropped", len(batch))
            self._discard(len(batch))
            return True
        try:
            response = await client.post(self.endpoint, content=body, headers=self._headers, timeout=self._timeout)
        except Exception as exc:
            if _transient(exc):  # refused, timed out, a broken connection
                return self._failed(len(batch), self._scrub(describe(exc)))
            # The request itself cannot be sent (a bad URL or header): retrying cannot fix it. Only
            # the error's class is logged: its message may quote a header value (a credential).
            reason = type(exc).__name__
            _log.error(
                "could not send %d telemetry event(s) to %s (%s); they are dropped",
                len(batch),
                self.endpoint,
                printable(reason),
            )
            self._discard(len(batch))
            return True
        status = response.status_code
        if 200 <= status < 300:
            if self._failing:
                _log.info("telemetry delivery to %s works again after %d failed tries", self.endpoint, self._failing)
            self._failing = 0
            self._full_warned = False
            self._pop(len(batch))
            return True
        if 400 <= status < 500 and status not in _RETRIED_CLIENT_ERRORS:
            # Only the status line: a response body may echo the request, key included.
            _log.error(
                "%s rejected %d telemetry event(s) with HTTP %d %s; they are dropped",
                self.endpoint,
                len(batch),
                status,
                response.reason_phrase,
            )
            self._discard(len(batch))
            return True
        return self._failed(len(batch), f"HTTP {status} {response.reason_phrase}")

    def _scrub(self, text: str) -> str:
        """`text` without the service key, in any of the forms an error message may quote it.

        Only whole occurrences, not inside a longer run of letters and digits: a message quotes
        a key delimited (a header, a repr), and a short key ("k") replaced inside words made
        "Name or service not known" read "not ***nown" while hiding nothing.
        """
        return self._key_forms.sub("***", text)

    def _failed(self, count: int, reason: str) -> bool:
        self._failing += 1
        if self._max_retries is not None and self._failing > self._max_retries:
            _log.error(
                "giving up on %d telemetry event(s) after %d tries to %s (%s); they are dropped",
                count,
                self._failing,
                self.endpoint,
                printable(reason),
            )
            self._discard(count)
            return True
        # Warn when an outage starts; every further try of it is debug, or an outage floods the log.
        level = logging.WARNING if self._failing == 1 else logging.DEBUG
        _log.log(
            level,
            "could not deliver %d telemetry event(s) to %s (%s); retrying with backoff, %d event(s) buffered",
            count,
            self.endpoint,
            printable(reason),
            len(self._buffer),
        )
        return False

    def _discard(self, count: int) -> None:
        self._pop(count)
        self._dropped += count
        self._failing = 0

    def _pop(self, count: int) -> None:
        # Only the sender removes events, and only from the left; emit only appends on the right.
        for _ in range(count):
            self._buffer.popleft()

    def _wire(self, event: TrackedEvent) -> dict[str, Any]:
        # The event's own fields first, so a data field can never overwrite an identifying one.
        return {
            **event.data,
            "type": event.type,
            "instance_id": event.instance_id,
            "job_type": event.job_type,
            "job_name": event.job_name,
            "at": event.at,
            "env": self.env,
        }
