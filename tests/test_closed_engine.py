"""Every verb of every client of a closed engine fails with the closed engine's `StorageError`.

The same error whatever the verb would have done: one that writes nothing (``send_event`` of an
event no job listens to), one of a client for a name the engine does not know, an unscoped client
of an engine that requires tenants, a bad argument. A caller that kept a client past the engine's
``async with`` block learns that the engine is gone, never a success nothing backs, and nothing is
logged as a bug. On memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from postgres_support import dropped_after, new_schema_name, postgres_dsn

import djobs
from djobs._errors import CLOSED_MESSAGE
from djobs.testing import failure, open_test_engine, success


class Named(msgspec.Struct):
    name: str


def greet(params: Named, ctx: djobs.JobContext) -> None:
    pass


def fold(ctx: djobs.DebounceEventContext[Named, Named]) -> Named:
    return ctx.event


def on_event(event: Named, ctx: djobs.TaskEventContext[Named]) -> None:
    ctx.set_state(event)


async def visit(params: Named, ctx: djobs.WorkflowContext) -> Named:
    return params


greeter = djobs.Job.make("greeter", params=Named, execute=greet, on="greet")
watcher = djobs.Continuous.make("watcher", state=Named, schedule=djobs.every("1 hour"), execute=lambda ctx: None)
gatherer = djobs.Debounce.make(
    "gatherer", event=Named, state=Named, on_event=fold, execute=lambda ctx: None, flush_after="1 hour"
)
keeper = djobs.Task.make("keeper", state=Named, event=Named, on_event=on_event, execute=lambda ctx: None)
visitor = djobs.Workflow.make("visitor", input=Named, result=Named, execute=visit)
nightly = djobs.CronJob.make(
    "nightly", schedule=djobs.cron("0 3 * * *"), job=greeter, params=Named("night"), tenant_id="t"
)
DEFINITIONS: list[Any] = [greeter, watcher, gatherer, keeper, visitor, nightly]

#: The arguments of every verb of every client (args, kwargs); `JOB_ID` is a stored job's id.
JOB_ID = object()
VERBS: dict[str, dict[str, tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "ContinuousClient": {
        "start": ((), {"id": "a", "input": Named("x")}),
        **{verb: (("a",), {}) for verb in ("trigger", "pause", "resume", "status", "get_state", "terminate")},
    },
    "DebounceClient": {
        "add": ((), {"id": "a", "event": Named("x")}),
        **{verb: (("a",), {}) for verb in ("flush", "clear", "status", "get_state")},
    },
    "TaskClient": {
        "send": ((), {"id": "a", "event": Named("x")}),
        **{verb: (("a",), {}) for verb in ("trigger", "status", "get_state", "terminate")},
    },
    "WorkflowClient": {
        "start": ((), {"id": "a", "input": Named("x")}),
        "signal": (("a", "go"), {}),
        "list": ((), {}),
        **{verb: (("a",), {}) for verb in ("status", "result", "cancel")},
    },
    "JobClient": {
        "now": ((Named("x"),), {}),
        "later": ((Named("x"),), {}),
        "later_many": (([Named("x")],), {}),
        "batch": (([Named("x")],), {}),
    },
    "JobsClient": {
        **{verb: ((JOB_ID,), {}) for verb in ("status", "cancel", "retry")},
        "list": ((), {}),
        "purge": ((), {"older_than": "1 day"}),
    },
    "CronsClient": {
        **{verb: (("nightly",), {}) for verb in ("get", "enable", "disable", "next_runs")},
        "list": ((), {}),
    },
    "DeadLettersClient": {
        **{verb: (("letter",), {}) for verb in ("get", "retry", "discard")},
        "list": ((), {}),
        "purge": ((), {"older_than": "1 day"}),
    },
}

#: Client methods that are not verbs: they give another client.
LOOKUPS = {"continuous", "debounce", "task", "workflow", "job", "for_tenant"}


def test_the_table_names_every_verb_of_every_client() -> None:
    for cls in (
        djobs.ContinuousClient,
        djobs.DebounceClient,
        djobs.TaskClient,
        djobs.WorkflowClient,
        djobs.JobClient,
        djobs.JobsClient,
        djobs.CronsClient,
        djobs.DeadLettersClient,
    ):
        public = {name for name, member in inspect.getmembers(cls) if not name.startswith("_") and callable(member)}
        assert public == set(VERBS[cls.__name__]), cls
    client_verbs = {n for n, m in inspect.getmembers(djobs.Client) if not n.startswith("_") and callable(m)}
    assert client_verbs - LOOKUPS == {"send_event"}


def verbs_of(client: djobs.Client, job_id: str) -> list[tuple[str, Any]]:
    """Every verb of every client `client` reaches, each a call that gives it, with its name."""
    kinds: dict[str, list[Any]] = {
        "ContinuousClient": [client.continuous(watcher), client.continuous("watcher"), client.continuous("typo")],
        "DebounceClient": [client.debounce(gatherer), client.debounce("gatherer"), client.debounce("typo")],
        "TaskClient": [client.task(keeper), client.task("keeper"), client.task("typo")],
        "WorkflowClient": [client.workflow(visitor), client.workflow("visitor"), client.workflow("typo")],
        "JobClient": [client.job(greeter), client.job("greeter"), client.job("typo")],
        "JobsClient": [client.jobs],
        "CronsClient": [client.crons],
        "DeadLettersClient": [client.dead_letters],
    }
    made: list[tuple[str, Any]] = []
    for kind, clients in kinds.items():
        for one in clients:
            for verb, (args, kwargs) in VERBS[kind].items():
                args = tuple(job_id if a is JOB_ID else a for a in args)
                made.append((f"{kind}.{verb}", functools.partial(getattr(one, verb), *args, **kwargs)))
    made += [
        ("send_event with a listener", lambda: client.send_event("greet", Named("x"))),
        ("send_event with none", lambda: client.send_event("nobody", Named("x"))),
        ("send_event with none, any payload", lambda: client.send_event("nobody", object())),
        ("send_event by Event", lambda: client.send_event(djobs.Event("greet", Named), Named("x"))),
        # a bad argument: the engine is gone all the same
        ("status of an empty id", lambda: client.continuous(watcher).status("")),
        ("add with a bad id", lambda: client.debounce(gatherer).add(id="", event=Named("x"))),
        ("start of a bad id", lambda: client.workflow(visitor).start(id="", input=Named("x"))),
    ]
    return made


def storage(kind: str, tmp_path: Path, schema: str | None) -> Any:
    if kind == "memory":
        return djobs.memory()
    if kind == "sqlite":
        return djobs.sqlite(tmp_path / "closed.db")
    return djobs.postgres(postgres_dsn() or "", schema=schema)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
@pytest.mark.parametrize("tenancy", ["optional", "required"])
def test_every_verb_of_a_closed_engine_fails_with_the_closed_engines_error(
    kind: str, tenancy: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if kind == "postgres" and postgres_dsn() is None:
        pytest.skip("DJOBS_TEST_POSTGRES_DSN is not set")
    schema = new_schema_name() if kind == "postgres" else None

    async def scenario() -> None:
        async with open_test_engine(DEFINITIONS, storage=storage(kind, tmp_path, schema), tenancy=tenancy) as engine:
            tenant = engine.client.for_tenant("t")
            job_id = success(await tenant.job(greeter).later(Named("before"), delay="1 day"))
        # The clients taken before the close, and ones looked up after it.
        for client in (engine.client, tenant, engine.client.for_tenant("t")):
            for name, verb in verbs_of(client, job_id):
                with caplog.at_level(logging.ERROR, logger="djobs"):
                    error = failure(await verb())
                assert error == djobs.StorageError(CLOSED_MESSAGE), (name, error)
        assert not caplog.records

    with dropped_after(schema):
        trio.run(scenario)
