"""Definition options: a retry is a `Retry`, logging a bool, a level or None, retry_on exception types.

What mypy refuses here, ``make`` refuses at run time too (a `ValidationError`), for code mypy never sees.
"""

from __future__ import annotations

import logging

import msgspec

import djobs


class P(msgspec.Struct):
    n: int = 0


def body(params: P, ctx: djobs.JobContext) -> None: ...


one_type = djobs.Retry(max_attempts=3, retry_on=ValueError)
a_tuple = djobs.Retry(max_attempts=3, retry_on=(ValueError, KeyError), jitter=True)
a_list = djobs.Retry(retry_on=[ValueError])  # E: arg-type
not_exceptions = djobs.Retry(retry_on=(int,))  # E: arg-type

levelled = djobs.Job.make("levelled", params=P, execute=body, retry=one_type, logging=logging.DEBUG)
silent = djobs.Job.make("silent", params=P, execute=body, logging=None)
count_as_retry = djobs.Job.make("bad1", params=P, execute=body, retry=5)  # E: call-overload
level_name = djobs.Job.make("bad2", params=P, execute=body, logging="DEBUG")  # E: call-overload
