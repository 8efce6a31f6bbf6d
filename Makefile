# Gondola: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test lint bench check-aifi clean venv mosquitto test-tools test-browser

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found %s)" % sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "cannot create a venv: install it with 'sudo apt-get install python3-venv'"; exit 1; }
	@echo "installing the project into $(VENV) …"
	@$(PIP) install --quiet --upgrade pip >/dev/null 2>&1 || true
	@$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,bench]"
	@touch $@

venv: $(VENV)/.installed

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing mosquitto (apt) …"; \
	    (apt-get install -y -qq mosquitto >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq mosquitto)) >/dev/null; \
	  else \
	    echo "mosquitto is missing: install it with 'sudo apt-get install mosquitto'"; exit 1; \
	  fi; }

# Store-in-a-box (aggregator/demo.py): a few shoppers by default; `make demo SHOPPERS=200` for the
# bench-sized store, `make demo DEMO_ARGS="--tracking noisy --web-port 8080"`, `DEMO_ARGS=--unit`
# for the single-unit live view.
SHOPPERS  ?=
DEMO_ARGS ?=
demo: venv mosquitto
	@$(PY) -m aggregator.demo $(if $(SHOPPERS),--shoppers $(SHOPPERS)) $(DEMO_ARGS)

# The deployment tests compile the device-tree overlays (dtc) and lint the install script
# (shellcheck); installed with apt like mosquitto, otherwise those tests skip (fail under CI).
test-tools:
	@command -v dtc >/dev/null 2>&1 && command -v shellcheck >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing device-tree-compiler and shellcheck (apt) …"; \
	    (apt-get install -y -qq device-tree-compiler shellcheck >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq device-tree-compiler shellcheck)) >/dev/null; \
	  else \
	    echo "dtc/shellcheck missing: 'sudo apt-get install device-tree-compiler shellcheck' (their tests skip)"; \
	  fi; }

# The staff page's test drives Debian's chromium headless (Playwright with executable_path);
# installed with apt when root, otherwise that test skips (fails under CI).
test-browser:
	@test -x /usr/bin/chromium && command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt) …"; \
	    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)) >/dev/null; \
	  else \
	    echo "chromium missing: 'sudo apt-get install chromium chromium-driver' (the staff page test skips)"; \
	  fi; }

# ruff (style, imports, likely bugs) on every Python file, then mypy on the three packages; the
# settings are in pyproject.toml. Part of `make test`, so CI fails on any finding.
lint: venv
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy

test: venv mosquitto test-tools test-browser lint
	@$(PY) -m pytest -q

bench: venv mosquitto
	@$(PY) bench/sim_bench.py
	@$(VENV)/bin/shelfd replay ../shared/data/aifi-benchmark-1 --format aifi --out /dev/null
	@$(PY) bench/throughput_bench.py
	@$(PY) bench/latency_bench.py
	@$(PY) bench/vision_bench.py

check-aifi: venv
	@../shared/checks/aifi-benchmark-1

clean:
	rm -rf $(VENV) *.egg-info bench/out .pytest_cache
