"""Job limits: the key function is checked against the job's params; the rate is text or a RateLimit."""

from __future__ import annotations

from datetime import timedelta

import msgspec

import djobs


class Sync(msgspec.Struct):
    account_id: str
    page: int


def sync(params: Sync, ctx: djobs.JobContext) -> None: ...


per_account = djobs.Job.make(
    "sync", params=Sync, execute=sync, concurrency=2, rate_limit="10/minute", limit_key=lambda p: p.account_id
)
typed_rate = djobs.Job.make(
    "syncTyped", params=Sync, execute=sync, rate_limit=djobs.RateLimit(5, timedelta(seconds=10))
)
whole_job = djobs.Job.make("syncAll", params=Sync, execute=sync, concurrency=1)


def by_page(params: Sync) -> str:
    return str(params.page)


keyed_by_function = djobs.Job.make("syncPages", params=Sync, execute=sync, concurrency=3, limit_key=by_page)

# The key function reads the params it is given, and returns a str.
no_field = djobs.Job.make(
    "bad1",
    params=Sync,
    execute=sync,
    concurrency=1,
    limit_key=lambda p: p.tenant,  # E: attr-defined
)
not_text = djobs.Job.make(
    "bad2",
    params=Sync,
    execute=sync,
    concurrency=1,
    limit_key=lambda p: p.page,  # E: arg-type  # E: return-value
)
rate_number = djobs.Job.make("bad3", params=Sync, execute=sync, rate_limit=100)  # E: call-overload


# A cron job with its own body takes the same limits; a rate is text or a RateLimit there too.
def tick(fire: djobs.CronFire, ctx: djobs.JobContext) -> None: ...


one_at_a_time = djobs.CronJob.make("tick", schedule="* * * * *", execute=tick, concurrency=1)
cron_rate = djobs.CronJob.make("tickRate", schedule="* * * * *", execute=tick, rate_limit="1/minute")
cron_bad_count = djobs.CronJob.make("bad4", schedule="* * * * *", execute=tick, concurrency="1")  # E: arg-type
cron_bad_rate = djobs.CronJob.make("bad5", schedule="* * * * *", execute=tick, rate_limit=5)  # E: arg-type
