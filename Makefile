VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint bench demo

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	bash scripts/services.sh
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	bash scripts/services.sh --bench
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.run

demo: install
	bash scripts/services.sh --install-only
	$(VENV)/bin/pushsync demo
