# `make run` serves the app on the embedded defaults; `make test` runs the test suite.
# Both create .venv and install the pinned requirements first (again only when they change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ADDR ?= 127.0.0.1:8000
# The second test pass runs against these (override to point elsewhere).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/chat
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
export TEST_DATABASE_URL TEST_REDIS_URL

.PHONY: run test test-embedded test-services lint

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(INSTALLED)

run: $(INSTALLED)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py runserver $(ADDR)

# Two passes: the embedded defaults (SQLite, in-memory layer), then PostgreSQL + Redis (all but
# the emulators' own tests and the benchmark smoke test, which use no shared database).
# Without PostgreSQL or Redis the second pass is skipped with the reason; in CI it fails.
test: test-embedded test-services

test-embedded: $(INSTALLED)
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -m "not services" $(PYTEST_ARGS)

test-services: $(INSTALLED)
	@if $(PY) -m tests.services check; then \
		echo "Second pass: PostgreSQL ($(TEST_DATABASE_URL)) and Redis ($(TEST_REDIS_URL))"; \
		DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest \
			--ignore-glob="tests/*/test_emulator*.py" --ignore=tests/test_bench.py $(PYTEST_ARGS); \
	elif [ "$$CI" = "true" ]; then \
		echo "CI: PostgreSQL and Redis are required for the second pass"; exit 1; \
	else \
		echo "Skipped the PostgreSQL + Redis pass: start them (see the README) to run it"; \
	fi

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
