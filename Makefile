# Everything a fresh machine needs is installed from here (Python 3.10+ and the package registries).
# Debian's system Python is preferred: partition users must be able to execute the interpreter,
# and a Python under root's 0700 home is not reachable for them.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all install test test-deps lint demo demo-stop bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# As root the attack suite plays tenants with setfacl/setfattr (Debian packages acl and attr).
test-deps:
	@if [ "$$(id -u)" = 0 ] && ! command -v setfacl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q acl attr; fi

lint: $(STAMP)
	$(BIN)/ruff check slapos tests bench

demo: $(STAMP)
	$(BIN)/python demo/demo.py

demo-stop: $(STAMP)
	$(BIN)/python demo/demo.py --stop

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
