# Two commands for a newcomer: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# --no-compile: byte-compiling every file installed (Faker's hundreds of locales) takes longer
# than compiling, on first import, the modules that are used.
INSTALL := $(BIN)/pip install --quiet --no-compile -c requirements.lock
# One stamp per set of extras, each on top of what serving needs: `make serve` after
# `make test` installs nothing, and `make serve` alone skips the test and bench tools.
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install serve migrate test test-unit lint typecheck check bench bench-full clickhouse-server chromium wrk clean

# The runtime and the embedded PostgreSQL (the `embedded` extra).
$(SERVE_STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(INSTALL) -e '.[embedded]'
	touch $@

$(TEST_STAMP): $(SERVE_STAMP)
	$(INSTALL) -e '.[embedded,dev]'
	touch $@

$(BENCH_STAMP): $(SERVE_STAMP)
	$(INSTALL) -e '.[embedded,bench]'
	touch $@

install: $(TEST_STAMP) $(BENCH_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/event-metrics serve

migrate: $(SERVE_STAMP)
	$(BIN)/event-metrics migrate

# The tests start their own ClickHouse server from the Debian package; install it if absent.
clickhouse-server:
	@command -v clickhouse-server >/dev/null 2>&1 || test -x /usr/bin/clickhouse || \
		{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null) || \
		  echo "clickhouse-server not installed: ClickHouse tests will skip (or fail with EVENT_METRICS_REQUIRE_SERVICES=1)"; }

# The schema pages are tested in Debian's chromium (driven by Playwright); install it if absent.
chromium:
	@test -x /usr/bin/chromium || \
		{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		  echo "chromium not installed: schema page tests will skip (or fail with EVENT_METRICS_REQUIRE_SERVICES=1)"; }

# Property tests try 400 examples each under `make test` and 50 under `make test-unit`
# (hypothesis profiles, tests/conftest.py); e.g. `make test-unit HYPOTHESIS_PROFILE=deep`.
test: HYPOTHESIS_PROFILE ?= deep
test: $(TEST_STAMP) clickhouse-server chromium
	HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(BIN)/pytest $(PYTEST_ARGS)

# The tests that need no server: payload, events, queue, buckets, planner, settings.
test-unit: HYPOTHESIS_PROFILE ?= quick
test-unit: $(TEST_STAMP)
	HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench alembic throwaway
	$(BIN)/ruff format --check src tests bench alembic throwaway

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

check: lint typecheck test

# bench.run drives single events with wrk too (an independent load generator in C).
wrk:
	@command -v wrk >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null); } || \
		{ echo "wrk is needed by make bench: apt-get install wrk"; exit 1; }

bench: $(BENCH_STAMP) clickhouse-server wrk
	$(BIN)/python -m bench.run --rows 1000000 --load-total 20000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
