# Tiaki's set-up contract: `make demo` and `make test` do all the set-up on a fresh machine.
# Needs Python 3.11+, Java 17+ and Maven on PATH (see README).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lint typecheck unit test demo bench kafka-up kafka-down clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tiaki needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check broker adapters tests bench
	$(BIN)/ruff format --check broker adapters tests bench
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

# The unit and property tests in two processes (pytest-xdist): they are CPU-bound and
# independent, and take about half the time of one process on a 2-core machine. Tests that
# share something outside the process (the PostgreSQL index tests' database) are marked
# xdist_group and run in one worker.
unit: $(STAMP)
	$(BIN)/pytest tests -m 'not integration' -q -n 2 --dist loadgroup

# The whole suite: lint, type check, unit and property tests, then the integration tests
# against the real Apache Kafka that the session fixture assembles, starts and stops (in one
# process: they share that Kafka, and several wait on timings a second process would disturb).
test: lint unit
	$(BIN)/pytest tests -m integration -q

# The main job on the embedded default: a local Apache Kafka, provisioned agencies with their
# ACLs and profiles, development keys, then an ISR day played through seven reference adapters
# and the real broker, with what each agency received. Kafka stays up afterwards; `make
# kafka-down` stops it. `make demo DEMO_FLAGS=--stay` keeps the broker and adapters running.
demo: $(STAMP)
	$(BIN)/tiaki kafka up
	$(BIN)/tiaki provision
	$(BIN)/tiaki keys init
	$(BIN)/tiaki demo $(DEMO_FLAGS)
	@echo
	@echo "Kafka is running on 127.0.0.1:$${TIAKI_KAFKA_PORT:-19093} (SASL_SSL + SCRAM-SHA-512); profiles in .tiaki/profiles/."
	@echo "Stop it with: make kafka-down"

bench: $(STAMP)
	$(BIN)/python -m bench

kafka-up: $(STAMP)
	$(BIN)/tiaki kafka up

kafka-down: $(STAMP)
	$(BIN)/tiaki kafka down

clean:
	-$(BIN)/tiaki kafka down
	rm -rf .tiaki .mypy_cache .ruff_cache .pytest_cache
