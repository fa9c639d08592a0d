"""The inspection read side: the same answers from every storage.

The command line, the dashboard and the metrics collector read through
`Inspector`; it is checked here against each storage, rows written through
the protocols alone (``purge_jobs`` is in ``djobs.testing.check_storage``).
"""

from __future__ import annotations

import pytest

from djobs.storage import Checkin, InstanceRecord, JobSettlement, NewJob, SetAlarm
from djobs.storage._inspect import InstanceFilter, inspector

from . import FullStorage

pytestmark = pytest.mark.trio

MINUTE = 60_000


def job(n: int, *, name: str = "send", tenant: str | None = None, key: str | None = None) -> NewJob:
    return NewJob(
        id=f"job-{n:04d}",
        name=name,
        params=b"{}",
        max_attempts=1,
        scheduled_for=0,
        created_at=0,
        tenant_id=tenant,
        idempotency_key=key,
    )


async def finish(storage: FullStorage, ids: list[str], status: str, at: int) -> None:
    claimed = await storage.claim_jobs(at, at + MINUTE, "w", ["send", "other"], 100)
    wanted = {c.id for c in claimed} & set(ids)
    settlements = [
        JobSettlement(job_id=c.id, worker_id="w", attempt=c.attempt, status=status, at=at, result=b"1", error=b"{}")  # type: ignore[arg-type]
        for c in claimed
        if c.id in wanted
    ]
    assert all(await storage.settle_jobs(settlements))
    # Hand the rest back unstarted.
    rest = [
        JobSettlement(job_id=c.id, worker_id="w", attempt=c.attempt, status="pending", at=at, release=True)
        for c in claimed
        if c.id not in wanted
    ]
    if rest:
        assert all(await storage.settle_jobs(rest))


async def test_the_inspector_counts_and_lists_alike(storage: FullStorage) -> None:
    look = inspector(storage)
    await storage.enqueue_jobs([job(1), job(2), job(3, name="other"), job(4)])
    await finish(storage, ["job-0001", "job-0003"], "completed", 3 * MINUTE + 10)
    await finish(storage, ["job-0002"], "failed", 4 * MINUTE + 20)
    by_name = [(c.name, c.status, c.count) for c in await look.job_counts_by_name()]
    assert by_name == [
        ("other", "completed", 1),
        ("send", "completed", 1),
        ("send", "failed", 1),
        ("send", "pending", 1),
    ]
    minutes = [(m.minute, m.completed, m.failed) for m in await look.finished_per_minute(0, 10 * MINUTE)]
    assert minutes == [(3 * MINUTE, 2, 0), (4 * MINUTE, 0, 1)]
    assert await look.finished_per_minute(4 * MINUTE + 21, 10 * MINUTE) == []
    for n, tenant in ((1, None), (2, "acme")):
        key = f"task:t:{'acme' + chr(0x1F) if tenant else ''}i{n}"
        record = InstanceRecord(key=key, kind="task", name="t", instance_id=f"i{n}", status="active", tenant_id=tenant)
        await storage.commit(Checkin(key=key, record=record, alarm=SetAlarm(fire_at=n * MINUTE, purpose="execute")))
    views = await look.instances(InstanceFilter(tenant_id="acme"))
    assert [v.record.instance_id for v in views] == ["i2"] and views[0].alarm is not None
    assert [v.record.key for v in await look.instances(InstanceFilter(status="active", kind="task"))] == [
        "task:t:acme\x1fi2",
        "task:t:i1",
    ]
    summary = await look.summary(90_000)
    assert (summary.alarms.due, summary.alarms.later, summary.alarms.next_at) == (1, 1, 2 * MINUTE)
    assert summary.jobs == {"pending": 1, "running": 0, "completed": 2, "failed": 1, "cancelled": 0}
    assert summary.oldest_pending is not None and summary.oldest_pending.id == "job-0004"
