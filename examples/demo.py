"""The djobs demo: every job kind working on ./djobs-demo.db, in real time (about 12 seconds):
continuous, debounce, task, workflow, the queue and cron.

Run it with ``make demo``. It prints what happens and ends by itself.
"""

from __future__ import annotations

import os
from datetime import datetime

import msgspec
import trio

import djobs

DB = "djobs-demo.db"


def say(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S.%f')[:-3]}] {text}", flush=True)


# -- Continuous: a heartbeat with state that survives a restart -------------------------


class Beat(msgspec.Struct):
    count: int = 0
    last_at: datetime | None = None


def beat(ctx: djobs.ContinuousContext[Beat]) -> None:
    ctx.set_state(Beat(ctx.state.count + 1, ctx.now()))
    say(f"  heartbeat {ctx.instance_id!r}: run {ctx.run_count}, beats so far {ctx.state.count}")


heartbeat = djobs.Continuous.make("heartbeat", state=Beat, schedule=djobs.every("1 second"), execute=beat)


async def continuous_demo() -> None:
    say("Continuous: start a heartbeat every second, then close the engine")
    async with djobs.open_engine([heartbeat], storage=djobs.sqlite(DB)) as engine:
        client = engine.client.continuous(heartbeat)
        started = djobs.unwrap_or_raise(await client.start(id="demo", input=Beat()))
        say(f"  started: {started}")
        await trio.sleep(2.5)
        before = djobs.unwrap_or_raise(await client.get_state("demo")).state.count
    say(f"  engine closed with {before} beats stored; opening a new engine on the same file")
    async with djobs.open_engine([heartbeat], storage=djobs.sqlite(DB)) as engine:
        client = engine.client.continuous(heartbeat)
        again = djobs.unwrap_or_raise(await client.start(id="demo", input=Beat()))
        say(f"  start again: created={again.created} (the instance survived the restart)")
        await trio.sleep(2.2)
        after = djobs.unwrap_or_raise(await client.get_state("demo")).state.count
        say(f"  beats now {after} (continued from {before})")
        assert after > before
        djobs.unwrap_or_raise(await client.terminate("demo", reason="demo over"))
        say(f"  terminated; status is now {djobs.unwrap_or_raise(await client.status('demo')).status!r}")


# -- Debounce: a webhook batcher --------------------------------------------------------


class Webhook(msgspec.Struct):
    contact_id: str
    kind: str


class Batch(msgspec.Struct):
    events: list[Webhook] = []


def collect(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> Batch:
    return Batch([*(ctx.state.events if ctx.state else []), ctx.event])


def send_batch(ctx: djobs.DebounceContext[Batch]) -> None:
    say(f"  flush of {ctx.event_count} webhooks for {ctx.instance_id!r} (reason: {ctx.flush_reason})")


webhooks = djobs.Debounce.make(
    "webhookBatcher",
    event=Webhook,
    state=Batch,
    flush_after="1 second",
    max_events=100,
    on_event=collect,
    execute=send_batch,
)


async def debounce_demo() -> None:
    say("Debounce: 250 webhooks in a burst, max_events=100, flush_after=1 second")
    async with djobs.open_engine([webhooks], storage=djobs.sqlite(DB)) as engine:
        client = engine.client.debounce(webhooks)
        for i in range(250):
            djobs.unwrap_or_raise(await client.add(id="contact-456", event=Webhook("456", f"update-{i}")))
        status = djobs.unwrap_or_raise(await client.status("contact-456"))
        say(f"  after the burst: {status.status}, {status.event_count} waiting, flush at {status.will_flush_at}")
        await trio.sleep(1.3)
        say(f"  then: {djobs.unwrap_or_raise(await client.status('contact-456')).status}")


# -- Task: an order workflow as a state machine -------------------------------------------


class OrderPlaced(msgspec.Struct, tag=True):
    order_id: str


class PaymentReceived(msgspec.Struct, tag=True):
    pass


class Shipped(msgspec.Struct, tag=True):
    tracking: str


class Order(msgspec.Struct):
    order_id: str
    status: str
    reminders: int = 0


OrderEvent = OrderPlaced | PaymentReceived | Shipped


def on_order_event(event: OrderEvent, ctx: djobs.TaskEventContext[Order]) -> None:
    match event:
        case OrderPlaced(order_id=order_id):
            ctx.set_state(Order(order_id, "pending"))
            ctx.schedule("1 second")  # check for payment soon
        case PaymentReceived():
            ctx.update_state(lambda s: msgspec.structs.replace(s, status="paid"))
            ctx.cancel_schedule()
        case Shipped():
            ctx.update_state(lambda s: msgspec.structs.replace(s, status="shipped"))
            ctx.schedule("1 second")  # check delivery


def check_order(ctx: djobs.TaskContext[Order]) -> None:
    state = ctx.state
    assert state is not None
    if state.status == "pending":
        say(f"  order {state.order_id}: still unpaid, sending reminder")
        ctx.set_state(msgspec.structs.replace(state, reminders=state.reminders + 1))
    elif state.status == "shipped":
        say(f"  order {state.order_id}: delivered, task done")
        ctx.terminate(reason="delivered")


orders = djobs.Task.make("orderProcessor", state=Order, event=OrderEvent, on_event=on_order_event, execute=check_order)


async def task_demo() -> None:
    say("Task: placed -> reminder -> paid -> shipped -> delivered")
    async with djobs.open_engine([orders], storage=djobs.sqlite(DB)) as engine:
        client = engine.client.task(orders)
        djobs.unwrap_or_raise(await client.send(id="order-789", event=OrderPlaced("order-789")))
        say(f"  placed: {djobs.unwrap_or_raise(await client.status('order-789'))}")
        await trio.sleep(1.2)
        djobs.unwrap_or_raise(await client.send(id="order-789", event=PaymentReceived()))
        say(f"  paid: {djobs.unwrap_or_raise(await client.get_state('order-789')).state}")
        djobs.unwrap_or_raise(await client.send(id="order-789", event=Shipped("1Z999")))
        await trio.sleep(1.2)
        say(f"  finally: {djobs.unwrap_or_raise(await client.status('order-789')).status}")


# -- Workflow: durable steps, a durable sleep and a signal ----------------------------------


class Signup(msgspec.Struct):
    email: str


class Verified(msgspec.Struct):
    code: str


async def create_account(email: str) -> str:
    say(f"  step 'create account' for {email}")
    return f"acct-{email.split('@')[0]}"


async def send_mail(email: str, text: str) -> None:
    say(f"  step 'mail' to {email}: {text}")


async def onboard(signup: Signup, ctx: djobs.WorkflowContext) -> str:
    account = await ctx.step("create account", create_account, signup.email)
    await ctx.sleep("1 second")  # a durable sleep: a row and an alarm, not a task held open
    verified = await ctx.wait_for_signal("verified", Verified, timeout="10 seconds")
    if isinstance(verified, djobs.TimedOut):
        await ctx.step("reminder", send_mail, signup.email, "please verify your address")
        return f"{account}: unverified"
    await ctx.step("welcome", send_mail, signup.email, f"welcome! (code {verified.code})")
    return f"{account}: verified"


onboarding = djobs.Workflow.make("onboarding", input=Signup, result=str, execute=onboard)


async def workflow_demo() -> None:
    say("Workflow: a step, a 1-second durable sleep, a signal, a last step")
    async with djobs.open_engine([onboarding], storage=djobs.sqlite(DB)) as engine:
        client = engine.client.workflow(onboarding)
        djobs.unwrap_or_raise(await client.start(id="signup-42", input=Signup("ada@example.com")))
        await trio.sleep(0.3)
        status = djobs.unwrap_or_raise(await client.status("signup-42"))
        say(f"  {status.status} at {status.current_step!r}, {status.steps_finished} step(s) finished")
        djobs.unwrap_or_raise(await client.signal("signup-42", "verified", Verified("123456")))
        say("  signal 'verified' sent while it sleeps: it is kept for the wait")
        await trio.sleep(1.2)  # the sleep ends 1 second after the start; the wait then takes the signal
        say(f"  then: {djobs.unwrap_or_raise(await client.status('signup-42')).status}")
        say(f"  result: {djobs.unwrap_or_raise(await client.result('signup-42'))!r}")


# -- The queue: one-off jobs now, later and in a batch; a cron job; an event --------------


class Image(msgspec.Struct):
    name: str


class Thumbnail(msgspec.Struct):
    path: str


async def make_thumbnail(params: Image, ctx: djobs.JobContext) -> Thumbnail:
    await trio.sleep(0.05)  # the "work"
    say(f"  thumbnail of {params.name!r} (job {ctx.job_id or 'not persisted'}, attempt {ctx.attempt})")
    return Thumbnail(f"thumbs/{params.name}")


thumbnail = djobs.Job.make("thumbnail", params=Image, result=Thumbnail, execute=make_thumbnail, on="image.uploaded")


def tick(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
    say(f"  cron job {fire.cron!r} fired for {fire.scheduled_at:%H:%M:%S}")


ticker = djobs.CronJob.make("ticker", schedule=djobs.every("1 second"), execute=tick)


async def queue_demo() -> None:
    say("Queue: three jobs for later, one now, a batch, an event, and a cron job every second")
    worker = djobs.WorkerOptions(max_concurrency=3, poll_interval="200ms")
    async with djobs.open_engine([thumbnail, ticker], storage=djobs.sqlite(DB), worker=worker) as engine:
        jobs = engine.client.job(thumbnail)
        ids = [
            djobs.unwrap_or_raise(await jobs.later(Image(f"later-{i}.png"), delay=f"{300 * i}ms")) for i in (1, 2, 3)
        ]
        say(f"  enqueued {len(ids)} jobs for 0.3, 0.6 and 0.9 s from now")
        run = djobs.unwrap_or_raise(await jobs.now(Image("now.png")))
        say(f"  now: {run.status}, result {run.result}, {run.duration_ms:.0f} ms")
        runs = djobs.unwrap_or_raise(await jobs.batch([Image(f"batch-{i}.png") for i in range(4)], concurrency=2))
        say(f"  batch: {[r.result.path for r in runs if r.result]}")
        sent = djobs.unwrap_or_raise(await engine.client.send_event("image.uploaded", {"name": "uploaded.png"}))
        say(f"  event image.uploaded enqueued {sent.job_names}")
        await trio.sleep(2.1)
        statuses = [djobs.unwrap_or_raise(await engine.client.jobs.status(i)).status for i in ids]
        say(f"  the later jobs are now {statuses}")
        [cron] = djobs.unwrap_or_raise(await engine.client.crons.list())
        say(f"  cron job {cron.name!r} next runs at {cron.next_run_at:%H:%M:%S}")
        djobs.unwrap_or_raise(await engine.client.crons.disable(ticker))


def remove_old_database() -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(DB + suffix):
            os.remove(DB + suffix)


async def main() -> None:
    remove_old_database()
    say(f"djobs demo on {DB}")
    await continuous_demo()
    await debounce_demo()
    await task_demo()
    await workflow_demo()
    await queue_demo()
    say("demo finished")


if __name__ == "__main__":
    trio.run(main)
