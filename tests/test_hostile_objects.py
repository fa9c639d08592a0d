"""A hostile object given to any argument of any client verb (one whose ``repr``, ``str``, ``==``,
``hash``, ``len``, ``iter`` or ``bool`` raises; a str subclass whose ``==`` and ``hash`` raise) is the
caller's mistake: the verb answers a typed error (a `ValidationError`, or what the verb answers
for that argument), or takes the value if it is a valid one, and never raises the object's
exception, never answers the "unexpected" `StorageError` of a bug, and never logs a bug.

(An object whose ``__class__`` raises is beyond this: ``isinstance`` itself raises for it.)
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from returns.io import IOFailure, IOSuccess

import djobs
from djobs.testing import open_test_engine, success


class Boom(Exception):
    pass


class ReprBoom:
    def __repr__(self) -> str:
        raise Boom("repr")


class StrBoom(ReprBoom):
    def __str__(self) -> str:
        raise Boom("str")


class EqBoom(ReprBoom):
    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    def __hash__(self) -> int:
        raise Boom("hash")


class BoolBoom(ReprBoom):
    def __bool__(self) -> bool:
        raise Boom("bool")


class IterList(list[Any]):
    def __iter__(self) -> Any:
        raise Boom("iter")


class LenList(list[Any]):
    def __len__(self) -> int:
        raise Boom("len")


class IterTuple(tuple[Any, ...]):
    def __iter__(self) -> Any:
        raise Boom("iter")


class EqStr(str):
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    def __hash__(self) -> int:
        raise Boom("hash")


class FormatStr(str):
    __slots__ = ()

    def __format__(self, spec: str) -> str:
        raise Boom("format")

    def __len__(self) -> int:
        raise Boom("len")


HOSTILE: dict[str, Any] = {
    "repr raises": ReprBoom(),
    "str raises": StrBoom(),
    "eq and hash raise": EqBoom(),
    "bool raises": BoolBoom(),
    "iter raises": IterList([1]),
    "len raises": LenList([1]),
    "a tuple whose iter raises": IterTuple((1,)),
    "a str whose eq and hash raise": EqStr("x"),
    "a str whose format and len raise": FormatStr("x"),
}


class P(msgspec.Struct):
    x: int = 0


def body(params: P, ctx: djobs.JobContext) -> None:
    pass


def fold(ctx: djobs.DebounceEventContext[P, P]) -> P:
    return ctx.event


def on_event(event: P, ctx: djobs.TaskEventContext[P]) -> None:
    ctx.set_state(event)


async def visit(params: P, ctx: djobs.WorkflowContext) -> P:
    return params


# Struct inputs holding them: a params struct, a list and a dict with one inside.
HOSTILE.update(
    {
        "a struct holding one": P(x=ReprBoom()),  # type: ignore[arg-type]  # the mistake under test
        "a struct holding a str whose eq raises": P(x=EqStr("1")),  # type: ignore[arg-type]
        "a list holding one": [P(), EqBoom()],
        "a dict holding one": {"x": StrBoom()},
    }
)

job = djobs.Job.make("job", params=P, execute=body, on="evt")
cont = djobs.Continuous.make("cont", state=P, schedule=djobs.every("1 hour"), execute=lambda ctx: None)
deb = djobs.Debounce.make("deb", event=P, state=P, on_event=fold, execute=lambda ctx: None, flush_after="1 hour")
task = djobs.Task.make("task", state=P, event=P, on_event=on_event, execute=lambda ctx: None)
wf = djobs.Workflow.make("wf", input=P, result=P, execute=visit)
nightly = djobs.CronJob.make("nightly", schedule=djobs.cron("0 3 * * *"), job=job, params=P())


def verb(client: Any, name: str, *args: Any, at: str | None = None) -> Any:
    """A function of `x` that calls `client`'s verb `name` with `args`, and `x` as keyword `at`
    (or as the last positional argument)."""

    def call(x: Any) -> Any:
        if at is None:
            return getattr(client, name)(*args, x)
        return getattr(client, name)(*args, **{at: x})

    return call


def calls(c: djobs.Client) -> dict[str, Any]:
    """Every argument of every verb (and the lookups), each a function of the value to put there."""
    cc, dc, tc, wc, jc = c.continuous(cont), c.debounce(deb), c.task(task), c.workflow(wf), c.job(job)
    return {
        # lookups: a client for a hostile "name" is one whose verbs fail
        "client.continuous": lambda x: c.continuous(x).status("a"),
        "client.debounce": lambda x: c.debounce(x).status("a"),
        "client.task": lambda x: c.task(x).status("a"),
        "client.workflow": lambda x: c.workflow(x).status("a"),
        "client.job": lambda x: c.job(x).later(P()),
        "client.for_tenant": lambda x: c.for_tenant(x).jobs.list(),
        "client.for_tenant an instance": lambda x: c.for_tenant(x).continuous(cont).status("a"),
        "continuous.start id": lambda x: cc.start(id=x, input=P()),
        "continuous.start input": lambda x: cc.start(id="a", input=x),
        **{f"continuous.{v}": verb(cc, v) for v in _ID_VERBS["continuous"]},
        "continuous.terminate reason": lambda x: cc.terminate("a", reason=x),
        "debounce.add id": lambda x: dc.add(id=x, event=P()),
        "debounce.add event": lambda x: dc.add(id="a", event=x),
        "debounce.add event_id": lambda x: dc.add(id="a", event=P(), event_id=x),
        **{f"debounce.{v}": verb(dc, v) for v in _ID_VERBS["debounce"]},
        "task.send id": lambda x: tc.send(id=x, event=P()),
        "task.send event": lambda x: tc.send(id="a", event=x),
        "task.send event_id": lambda x: tc.send(id="a", event=P(), event_id=x),
        **{f"task.{v}": verb(tc, v) for v in _ID_VERBS["task"]},
        "task.terminate reason": lambda x: tc.terminate("a", reason=x),
        "workflow.start id": lambda x: wc.start(id=x, input=P()),
        "workflow.start input": lambda x: wc.start(id="a", input=x),
        **{f"workflow.{v}": verb(wc, v) for v in _ID_VERBS["workflow"]},
        "workflow.signal id": lambda x: wc.signal(x, "go"),
        "workflow.signal name": lambda x: wc.signal("a", x),
        "workflow.signal payload": lambda x: wc.signal("a", "go", x),
        "workflow.cancel reason": lambda x: wc.cancel("a", reason=x),
        "workflow.list status": lambda x: wc.list(status=x),
        "workflow.list after": lambda x: wc.list(after=x),
        "workflow.list limit": lambda x: wc.list(limit=x),
        "job.now params": lambda x: jc.now(x),
        "job.now persist": lambda x: jc.now(P(), persist=x),
        "job.now correlation_id": lambda x: jc.now(P(), correlation_id=x),
        "job.now tenant_id": lambda x: jc.now(P(), tenant_id=x),
        "job.later params": lambda x: jc.later(x),
        **{
            f"job.later {option}": verb(jc, "later", P(), at=option)
            for option in (
                "at",
                "delay",
                "correlation_id",
                "tenant_id",
                "priority",
                "idempotency_key",
                "unique",
                "unique_while",
            )
        },
        "job.later_many params_list": lambda x: jc.later_many(x),
        "job.later_many an element": lambda x: jc.later_many([P(), x]),
        **{
            f"job.later_many {option}": verb(jc, "later_many", [P()], at=option)
            for option in ("at", "delay", "correlation_id", "tenant_id", "priority")
        },
        "job.batch params_list": lambda x: jc.batch(x),
        "job.batch an element": lambda x: jc.batch([P(), x]),
        **{
            f"job.batch {option}": verb(jc, "batch", [P()], at=option)
            for option in ("concurrency", "persist", "stop_on_error", "correlation_id", "tenant_id")
        },
        **{f"jobs.{v}": verb(c.jobs, v) for v in ("status", "cancel", "retry")},
        **{
            f"jobs.list {option}": verb(c.jobs, "list", at=option)
            for option in ("status", "name", "correlation_id", "tenant_id", "after", "limit")
        },
        "jobs.purge older_than": lambda x: c.jobs.purge(older_than=x),
        "jobs.purge status": lambda x: c.jobs.purge(older_than="1 day", status=x),
        **{f"crons.{v}": verb(c.crons, v) for v in ("get", "enable", "disable")},
        "crons.next_runs cron": lambda x: c.crons.next_runs(x),
        "crons.next_runs n": lambda x: c.crons.next_runs("nightly", x),
        **{f"dead_letters.{v}": verb(c.dead_letters, v) for v in ("get", "retry", "discard")},
        **{
            f"dead_letters.list {option}": verb(c.dead_letters, "list", at=option)
            for option in ("kind", "name", "tenant_id", "limit")
        },
        "dead_letters.purge older_than": lambda x: c.dead_letters.purge(older_than=x),
        "send_event event": lambda x: c.send_event(x, P()),
        "send_event payload": lambda x: c.send_event("evt", x),
        **{
            f"send_event {option}": verb(c, "send_event", "evt", P(), at=option)
            for option in ("tenant_id", "correlation_id", "idempotency_key", "at", "delay")
        },
    }


_ID_VERBS = {
    "continuous": ("trigger", "pause", "resume", "status", "get_state", "terminate"),
    "debounce": ("flush", "clear", "status", "get_state"),
    "task": ("trigger", "status", "get_state", "terminate"),
    "workflow": ("status", "result", "cancel"),
}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_hostile_object_anywhere_gets_a_typed_answer(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        storage = djobs.memory() if kind == "memory" else djobs.sqlite(tmp_path / "hostile.db")
        async with open_test_engine([job, cont, deb, task, wf, nightly], storage=storage) as engine:
            success(await engine.client.continuous(cont).start(id="a", input=P()))
            wrong: list[str] = []
            for where, call in calls(engine.client).items():
                for what, value in HOSTILE.items():
                    caplog.clear()
                    with caplog.at_level(logging.ERROR, logger="djobs"):
                        try:
                            result = await call(value)
                        except Exception as exc:
                            wrong.append(f"{where} given {what}: raised {type(exc).__name__}")
                            continue
                    if caplog.records:
                        wrong.append(f"{where} given {what}: logged {caplog.records[0].getMessage()[:80]}")
                    elif isinstance(result, IOFailure):
                        error = result.failure()._inner_value  # the IO's error
                        if not isinstance(error, djobs.JobError) or "unexpectedly" in error.message:
                            wrong.append(f"{where} given {what}: {error!r:.120}")
                    else:
                        assert isinstance(result, IOSuccess)
            assert not wrong, "\n".join(wrong)

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
