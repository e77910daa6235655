# The two commands of the README: `make run` (the stack) and `make test` (every check).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bootstrap run test check lint typecheck pytest clean

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	$(BIN)/telemetry-stack up $(ARGS)

test: bootstrap check pytest

check: lint typecheck

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy .

pytest:
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .stack .pytest_cache .mypy_cache .ruff_cache
