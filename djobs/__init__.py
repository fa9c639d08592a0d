"""djobs: durable background jobs for Trio applications.

Jobs keep their state, alarms and queue in one SQLite file; they are written
as typed programs in the style of ``returns``; their services (storage,
clock, tracker, ...) are layers a test swaps for fakes.
"""

from ._client import Client as Client
from ._clock import Clock as Clock
from ._clock import VirtualClock as VirtualClock
from ._clock import WallClock as WallClock
from ._dead_letters import DeadLetterInfo as DeadLetterInfo
from ._dead_letters import DeadLetterRetryResult as DeadLetterRetryResult
from ._dead_letters import DeadLettersClient as DeadLettersClient
from ._durations import DurationLike as DurationLike
from ._durations import parse_duration as parse_duration
from ._engine import Engine as Engine
from ._engine import open_engine as open_engine
from ._errors import DuplicateEventError as DuplicateEventError
from ._errors import ExecutionError as ExecutionError
from ._errors import InstanceNotFoundError as InstanceNotFoundError
from ._errors import InvalidStateError as InvalidStateError
from ._errors import JobCancelledError as JobCancelledError
from ._errors import JobError as JobError
from ._errors import JobNotFoundError as JobNotFoundError
from ._errors import JobTimeoutError as JobTimeoutError
from ._errors import RetryExhaustedError as RetryExhaustedError
from ._errors import SchedulerError as SchedulerError
from ._errors import StorageError as StorageError
from ._errors import TenantError as TenantError
from ._errors import ValidationError as ValidationError
from ._event import Event as Event
from ._ids import Ids as Ids
from ._ids import RandomIds as RandomIds
from ._layers import Layers as Layers
from ._pipeline import ask as ask
from ._pipeline import non_retryable as non_retryable
from ._pipeline import progress as progress
from ._queue_limits import RateLimit as RateLimit
from ._results import unwrap_or_raise as unwrap_or_raise
from ._retention import Retention as Retention
from ._retry import Backoff as Backoff
from ._retry import JitteredRetries as JitteredRetries
from ._retry import Retry as Retry
from ._retry import RetryPolicy as RetryPolicy
from ._schedule import Cron as Cron
from ._schedule import Every as Every
from ._schedule import Schedule as Schedule
from ._schedule import cron as cron
from ._schedule import every as every
from ._worker import WorkerOptions as WorkerOptions
from .kinds._common import Definition as Definition
from .kinds._common import StateResult as StateResult
from .kinds._common import TerminateResult as TerminateResult
from .kinds._continuous import Continuous as Continuous
from .kinds._continuous import ContinuousClient as ContinuousClient
from .kinds._continuous import ContinuousContext as ContinuousContext
from .kinds._continuous import ContinuousStatus as ContinuousStatus
from .kinds._continuous import StartResult as StartResult
from .kinds._continuous import TriggerResult as TriggerResult
from .kinds._cron import CronFire as CronFire
from .kinds._cron import CronInfo as CronInfo
from .kinds._cron import CronJob as CronJob
from .kinds._cron import CronsClient as CronsClient
from .kinds._debounce import AddResult as AddResult
from .kinds._debounce import ClearResult as ClearResult
from .kinds._debounce import Debounce as Debounce
from .kinds._debounce import DebounceClient as DebounceClient
from .kinds._debounce import DebounceContext as DebounceContext
from .kinds._debounce import DebounceEventContext as DebounceEventContext
from .kinds._debounce import DebounceStatus as DebounceStatus
from .kinds._debounce import FlushResult as FlushResult
from .kinds._job import CancelResult as CancelResult
from .kinds._job import EventResult as EventResult
from .kinds._job import Job as Job
from .kinds._job import JobContext as JobContext
from .kinds._job import JobErrorInfo as JobErrorInfo
from .kinds._job import JobInfo as JobInfo
from .kinds._job import JobRun as JobRun
from .kinds._job import RetryResult as RetryResult
from .kinds._job_client import JobClient as JobClient
from .kinds._job_client import JobsClient as JobsClient
from .kinds._task import SendResult as SendResult
from .kinds._task import Task as Task
from .kinds._task import TaskClient as TaskClient
from .kinds._task import TaskContext as TaskContext
from .kinds._task import TaskEventContext as TaskEventContext
from .kinds._task import TaskStatus as TaskStatus
from .kinds._task import TaskTriggerResult as TaskTriggerResult
from .kinds._task import When as When
from .kinds._workflow import Workflow as Workflow
from .kinds._workflow import WorkflowClient as WorkflowClient
from .kinds._workflow_context import Step as Step
from .kinds._workflow_context import TimedOut as TimedOut
from .kinds._workflow_context import WorkflowContext as WorkflowContext
from .kinds._workflow_log import ChildJobError as ChildJobError
from .kinds._workflow_log import ChildWorkflowError as ChildWorkflowError
from .kinds._workflow_log import NonDeterminismError as NonDeterminismError
from .kinds._workflow_log import SignalResult as SignalResult
from .kinds._workflow_log import StepFailedError as StepFailedError
from .kinds._workflow_log import StepInfo as StepInfo
from .kinds._workflow_log import WorkflowCancelledError as WorkflowCancelledError
from .kinds._workflow_log import WorkflowCancelResult as WorkflowCancelResult
from .kinds._workflow_log import WorkflowFailedError as WorkflowFailedError
from .kinds._workflow_log import WorkflowStartResult as WorkflowStartResult
from .kinds._workflow_log import WorkflowStatus as WorkflowStatus
from .kinds._workflow_log import WorkflowSummary as WorkflowSummary
from .storage import memory as memory
from .storage import postgres as postgres
from .storage import sqlite as sqlite
from .tracking import InMemoryTracker as InMemoryTracker
from .tracking import NoopTracker as NoopTracker
from .tracking import TrackedEvent as TrackedEvent
from .tracking import Tracker as Tracker

__all__ = [
    "AddResult",
    "Backoff",
    "CancelResult",
    "ChildJobError",
    "ChildWorkflowError",
    "ClearResult",
    "Client",
    "Clock",
    "Continuous",
    "ContinuousClient",
    "ContinuousContext",
    "ContinuousStatus",
    "Cron",
    "CronFire",
    "CronInfo",
    "CronJob",
    "CronsClient",
    "DeadLetterInfo",
    "DeadLetterRetryResult",
    "DeadLettersClient",
    "Debounce",
    "DebounceClient",
    "DebounceContext",
    "DebounceEventContext",
    "DebounceStatus",
    "Definition",
    "DuplicateEventError",
    "DurationLike",
    "Engine",
    "Event",
    "EventResult",
    "Every",
    "ExecutionError",
    "FlushResult",
    "Ids",
    "InMemoryTracker",
    "InstanceNotFoundError",
    "InvalidStateError",
    "JitteredRetries",
    "Job",
    "JobCancelledError",
    "JobClient",
    "JobContext",
    "JobError",
    "JobErrorInfo",
    "JobInfo",
    "JobNotFoundError",
    "JobRun",
    "JobTimeoutError",
    "JobsClient",
    "Layers",
    "NonDeterminismError",
    "NoopTracker",
    "RandomIds",
    "RateLimit",
    "Retention",
    "Retry",
    "RetryExhaustedError",
    "RetryPolicy",
    "RetryResult",
    "Schedule",
    "SchedulerError",
    "SendResult",
    "SignalResult",
    "StartResult",
    "StateResult",
    "Step",
    "StepFailedError",
    "StepInfo",
    "StorageError",
    "Task",
    "TaskClient",
    "TaskContext",
    "TaskEventContext",
    "TaskStatus",
    "TaskTriggerResult",
    "TenantError",
    "TerminateResult",
    "TimedOut",
    "TrackedEvent",
    "Tracker",
    "TriggerResult",
    "ValidationError",
    "VirtualClock",
    "WallClock",
    "When",
    "WorkerOptions",
    "Workflow",
    "WorkflowCancelResult",
    "WorkflowCancelledError",
    "WorkflowClient",
    "WorkflowContext",
    "WorkflowFailedError",
    "WorkflowStartResult",
    "WorkflowStatus",
    "WorkflowSummary",
    "ask",
    "cron",
    "every",
    "memory",
    "non_retryable",
    "open_engine",
    "parse_duration",
    "postgres",
    "progress",
    "sqlite",
    "unwrap_or_raise",
]
