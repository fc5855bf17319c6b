# Everything a fresh machine needs is installed from here (Python 3.10+ and the package registries).
# Debian's system Python is preferred: partition users must be able to execute the interpreter,
# and a Python under root's 0700 home is not reachable for them.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all install test lint demo demo-stop bench clean browser screenshots

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The dashboard tests (pytest -m browser) drive Debian's headless Chromium. As root (CI) this
# installs it; otherwise it says what is missing and those tests skip with the same reason.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "chromium/chromium-driver missing: the browser tests will skip (as root: make browser)"; fi

# Regenerate the dashboard screenshots of docs/dashboard.md (committed under docs/_static/).
screenshots: $(STAMP) browser
	SLAPNODE_SCREENSHOTS=$(CURDIR)/docs/_static $(BIN)/python -m pytest tests/dashboard -m browser -n 0

lint: $(STAMP)
	$(BIN)/ruff check slapos tests bench

demo: $(STAMP)
	$(BIN)/python demo/demo.py

demo-stop: $(STAMP)
	$(BIN)/python demo/demo.py --stop

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache test-artifacts
