# Two commands set a fresh machine up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/kitchen/demo.py
	$(PY) examples/parser/app.py

lint: $(STAMP)
	$(VENV)/bin/ruff check nsxpc protocols tests examples bench
	$(VENV)/bin/ruff format --check nsxpc protocols

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The socket-activation test runs the real systemd-socket-activate (Debian's systemd).
system-deps:
	@command -v systemd-socket-activate >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
	  else echo "systemd-socket-activate is missing: its test will be skipped"; fi; }

unit: $(STAMP) system-deps
	$(PY) -m pytest -q tests

test: lint typecheck unit

bench: $(STAMP)
	$(PY) bench/roundtrip.py
	$(PY) bench/launch.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
