# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
export NO_MKDOCS_2_WARNING := 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format typecheck docs pytest soak bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.demo

# pytest runs one worker process per core; each test file runs whole on one worker (loadfile), in its
# own order, so a file's module- and session-scoped fixtures are set up once. `make test PYTEST_PARALLEL=`
# runs it in one process.
PYTEST_PARALLEL ?= -n auto --dist loadfile

# mkdocs runs without --quiet: --quiet hides the warnings that --strict turns into a failure.
test: $(STAMP)
	$(BIN)/ruff check djobs tests examples bench scripts
	$(BIN)/ruff format --check djobs tests examples bench scripts
	$(BIN)/mypy djobs
	$(BIN)/pytest -q $(PYTEST_PARALLEL)
	$(BIN)/mkdocs build --strict --site-dir .site

lint: $(STAMP)
	$(BIN)/ruff check djobs tests examples bench scripts
	$(BIN)/ruff format --check djobs tests examples bench scripts

# Rewrites the tree in the project's one style (`make test` checks it with --check).
format: $(STAMP)
	$(BIN)/ruff format djobs tests examples bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy djobs

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_PARALLEL)

# The crash harness, as long as asked: `make soak CYCLES=1000 [SEED=42] [PROCESSES=3] [STORAGE=postgres]`
# ends a workload process CYCLES times (SIGKILL at random moments and at kill points, or a close),
# then checks that nothing acknowledged was lost. PROCESSES workload processes share the database at
# once (1: one process, checked after every cycle); STORAGE is `sqlite` (a file) or `postgres` (a
# fresh schema on the server named by DJOBS_TEST_POSTGRES_DSN). `make test` runs a short version.
CYCLES ?= 200
SEED ?=
PROCESSES ?= 3
STORAGE ?= sqlite
soak: $(STAMP)
	PYTHONPATH=tests $(BIN)/python -m crash --cycles $(CYCLES) --processes $(PROCESSES) --storage $(STORAGE) \
		$(if $(SEED),--seed $(SEED))

# The benchmarks (docs/performance.md): each bench/*.py prints one JSON line, djobs beside its peer
# (Huey's SQLite queue; procrastinate on PostgreSQL) and the raw-SQL floor, in the same run. Not part
# of `make test`. `make bench BENCH_ARGS="--runs 1"` passes flags to every script (`--quick`: seconds,
# to check they run). The PostgreSQL ones print one line saying they were skipped unless a server is
# named in DJOBS_TEST_POSTGRES_DSN (or DJOBS_BENCH_POSTGRES_DSN).
# The peers come from the `bench` extra, installed here and never by `make test`.
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.installed-bench
# (Said on stderr, so the benchmarks' stdout holds only their JSON lines.)
$(BENCH_STAMP): $(STAMP) pyproject.toml
	@echo "installing the benchmarks' peers: pip install -e '.[dev,bench]'" >&2
	@$(BIN)/python -m pip install --quiet -e ".[dev,bench]" --config-settings editable_mode=compat
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@set -e; for script in bench/[!_]*.py; do \
		echo "running $$script" >&2; \
		$(BIN)/python $$script $(BENCH_ARGS); \
	done

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir .site

clean:
	rm -rf $(VENV) .site .mypy_cache .pytest_cache .ruff_cache djobs-demo.db*
