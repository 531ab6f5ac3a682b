VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test check lint bench demo docs lock

# Every install is pinned by constraints.txt (`make lock` refreshes it from pyproject.toml's ranges).
$(VENV)/.runtime: pyproject.toml constraints.txt
	VENV=$(VENV) bash scripts/install.sh runtime
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt
	VENV=$(VENV) bash scripts/install.sh test
	touch $@ $(VENV)/.runtime

install: $(VENV)/.installed

test: install
	bash scripts/services.sh
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .

# The fast tier for a developer's loop (a few minutes): lint, the type check ([tool.mypy] in
# pyproject.toml), and the tests that need no process of pushsync's own (Redis and PostgreSQL, as
# `make test`), the properties with fewer examples.
FAST := tests/test_layout.py tests/worker tests/store tests/scheduler tests/pushsync/test_contract.py tests/pushsync/test_broker.py \
	tests/pushsync/test_messages.py tests/pushsync/test_settings.py
check: lint
	$(VENV)/bin/mypy
	bash scripts/services.sh
	PUSHSYNC_PROPERTY_EXAMPLES=500 PUSHSYNC_COALESCING_EXAMPLES=500 PUSHSYNC_FUZZ_EXAMPLES=500 \
		$(VENV)/bin/pytest -q $(FAST)

bench: install
	bash scripts/services.sh --bench
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	$(PY) -m bench.run

# The demo needs the runtime only (no test tools) and redis-server (it runs one of its own).
demo: $(VENV)/.runtime
	bash scripts/services.sh --demo
	$(VENV)/bin/pushsync demo

# The documentation (docs/, mkdocs.yml) into site/, strictly: a broken link or a missing setting fails.
docs: install
	$(PY) -m pip install -q -c constraints.txt -e '.[test,docs]'
	$(VENV)/bin/mkdocs build --strict --site-dir site

lock:
	bash scripts/lock.sh
