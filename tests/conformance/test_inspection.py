"""The inspection read side: the same answers from every storage.

The command line, the dashboard and the metrics collector read through
`Inspector`; it is checked here against each storage, rows written through
the protocols alone, with the rows and settlements of the shipped suite
(``djobs.testing.check_storage``, which also checks ``purge_jobs``).
"""

from __future__ import annotations

import pytest

from djobs.storage import Checkin, InstanceRecord, SetAlarm
from djobs.storage._inspect import InstanceFilter, inspector
from djobs.testing._storage import finish_jobs, numbered_job

from . import FullStorage

pytestmark = pytest.mark.trio

MINUTE = 60_000


async def test_the_inspector_counts_and_lists_alike(storage: FullStorage) -> None:
    look = inspector(storage)
    await storage.enqueue_jobs([numbered_job(1), numbered_job(2), numbered_job(3, name="other"), numbered_job(4)])
    await finish_jobs(storage, ["job-0001", "job-0003"], "completed", 3 * MINUTE + 10)
    await finish_jobs(storage, ["job-0002"], "failed", 4 * MINUTE + 20)
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


async def test_the_inspector_orders_names_by_code_point_on_every_storage(storage: FullStorage) -> None:
    # Capitals before "_" before small letters, as SQLite compares text, whatever the
    # database's collation (a language's would put "alpha" and "Alpha" together).
    look = inspector(storage)
    names = ["beta", "Alpha", "_tidy", "alpha", "Beta"]
    await storage.enqueue_jobs([numbered_job(n, name=name) for n, name in enumerate(names, 1)])
    assert [c.name for c in await look.job_counts_by_name()] == ["Alpha", "Beta", "_tidy", "alpha", "beta"]
    for name in names:
        key = f"task:{name}:i"
        record = InstanceRecord(key=key, kind="task", name=name, instance_id="i", status="active")
        await storage.commit(Checkin(key=key, record=record))
    summary = await look.summary(0)
    assert [c.name for c in summary.instances] == ["Alpha", "Beta", "_tidy", "alpha", "beta"]


async def test_the_oldest_pending_job_of_one_due_time_is_the_first_enqueued(storage: FullStorage) -> None:
    # Due at one time, stored in the other order: the smaller id (ids grow with time) is the
    # oldest on every dialect, not whichever row the index happens to give first.
    await storage.enqueue_jobs([numbered_job(9)])
    await storage.enqueue_jobs([numbered_job(8)])
    oldest = (await inspector(storage).summary(0)).oldest_pending
    assert oldest is not None and oldest.id == "job-0008"
