"""The crash harness: a workload in a real subprocess, a driver that kills it, and invariant checks.

- `crash.workload` is the program under test: an engine on a SQLite file doing
  a mixed workload (continuous instances ticking, debounce adds, task events,
  queue jobs with retries). It journals every client call it makes (an intent
  before, an acknowledgement after, fsync'd) and every run of user code.
- `crash.driver` runs it, kills it with SIGKILL at random moments or at kill
  points the workload announces (inside user code, inside a commit, during
  shutdown), restarts it on the same file, and finally lets it settle.
- `crash.invariants` reads the journals and the database and lists every
  broken promise.

``python -m crash --cycles N`` (``make soak CYCLES=N``) runs N kill cycles;
``tests/test_crash.py`` runs a CI-sized number of them.
"""
