# Two commands for a newcomer: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve migrate test test-unit lint typecheck check bench bench-full clickhouse-server clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/event-metrics serve

migrate: $(STAMP)
	$(BIN)/event-metrics migrate

# The tests start their own ClickHouse server from the Debian package; install it if absent.
clickhouse-server:
	@command -v clickhouse-server >/dev/null 2>&1 || test -x /usr/bin/clickhouse || \
		{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null) || \
		  echo "clickhouse-server not installed: ClickHouse tests will skip (or fail with EVENT_METRICS_REQUIRE_SERVICES=1)"; }

test: $(STAMP) clickhouse-server
	$(BIN)/pytest $(PYTEST_ARGS)

# The tests that need no server: payload, events, queue, buckets, planner, settings.
test-unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench alembic throwaway
	$(BIN)/ruff format --check src tests bench alembic throwaway

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP) clickhouse-server
	$(BIN)/python -m bench.run --rows 1000000 --load-total 20000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
