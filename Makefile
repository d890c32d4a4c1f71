# Two commands set a fresh machine up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean system-deps fuzz soak

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,fuzz]'  # fuzz: atheris, so the fuzz smoke test runs in make test
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

# The peers (Pyro5, RPyC, grpcio, pyzmq) and matplotlib come from the `bench` extra,
# installed once (stamp); bench/README.md says what each script measures.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/compare.py
	$(PY) bench/roundtrip.py
	$(PY) bench/launch.py
	test ! -f bench/bulk.py || $(PY) bench/bulk.py

# Coverage-guided fuzzing of the frame and message decoder (atheris), then the
# Hypothesis properties with FUZZ_EXAMPLES times their examples. docs/TESTING.md.
FUZZ_RUNS ?= 200000
FUZZ_EXAMPLES ?= 20
fuzz: $(STAMP)
	$(PY) tests/fuzz/fuzz_decoder.py -runs=$(FUZZ_RUNS) -print_final_stats=1
	NSXPC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider -o faulthandler_timeout=0 tests/unit/test_fuzz_core.py

# The long fault and hostile-client runs (tests/soak/, skipped by `make test`). One of
# them launches a service 1000 times: a hang report waits 10 minutes, not the suite's 2.
soak: $(STAMP)
	NSXPC_SOAK=1 $(PY) -m pytest -q -s -p no:cacheprovider -o faulthandler_timeout=600 tests/soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
