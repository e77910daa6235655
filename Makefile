# The two commands of the README: `make run` (the stack) and `make test` (every check).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bootstrap run test check lint typecheck pytest clean deb

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

# The edge agent's Debian package in dist/ (docs/edge-agent.md, "Install on Debian/Ubuntu/
# Raspberry Pi OS"): `make deb`, `make deb ARCH=arm64`, `make deb PYTHON_VERSION=3.13`.
ARCH ?= $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
PYTHON_VERSION ?= 3.11
deb: bootstrap
	$(BIN)/python scripts/build_deb.py --arch $(ARCH) --python-version $(PYTHON_VERSION) $(DEB_ARGS)
