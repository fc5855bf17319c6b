# Everything a fresh machine needs is installed from here (Python 3.10+ and the package registries).
# Debian's system Python is preferred: partition users must be able to execute the interpreter,
# and a Python under root's 0700 home is not reachable for them.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# quiet: the newcomer sees the project's output, not pip's (errors still show)
PIP := $(BIN)/python -m pip --disable-pip-version-check --no-input -q

.PHONY: all install test test-deps lint demo demo-stop bench clean docs man typecheck browser screenshots

all: test

# Where the targets cannot run in place, they run in a staging copy (tools/stage.py): as root
# when `nobody` (who runs the node's builds and services) cannot reach this checkout (root's 0700
# home, `mktemp -d`), and for anyone when the path holds a space (buildout cannot build there).
# The ordinary case costs one `id -u`.
ifndef SLAPNODE_STAGED
ifneq ($(words $(CURDIR)),1)
STAGE_WHY := spaces
endif
ifeq ($(shell id -u),0)
STAGE_WHY += $(shell runuser -u nobody -- test -r '$(CURDIR)/Makefile' 2>/dev/null || echo unreachable)
endif
STAGE_WHY := $(strip $(STAGE_WHY))
endif

ifdef STAGE_WHY

STAGE_DIR := $(shell $(PYTHON) tools/stage.py path)

# the reference captures beside the checkout (../shared) stay where they are: tests find them
# through SLAPNODE_CAPTURES
install test lint demo bench docs man typecheck screenshots:
	@$(PYTHON) tools/stage.py sync $(STAGE_WHY)
	@captures="$$(cd .. && pwd)/shared/reference/captures"; \
	  if [ -z "$$SLAPNODE_CAPTURES" ] && [ -d "$$captures" ]; then export SLAPNODE_CAPTURES="$$captures"; fi; \
	  umask 022 && $(MAKE) --no-print-directory -C $(STAGE_DIR) SLAPNODE_STAGED=1 $@

demo-stop:
	@if [ -x $(STAGE_DIR)/$(BIN)/python ]; then \
	  umask 022 && $(MAKE) --no-print-directory -C $(STAGE_DIR) SLAPNODE_STAGED=1 demo-stop; \
	else echo "Nothing to stop: there is no staging copy $(STAGE_DIR)."; fi

clean:
	@$(PYTHON) tools/stage.py clean
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/_build docs/reference/generated test-artifacts

else

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip builds the package with setuptools from pyproject.toml in an isolated environment: the
# virtualenv's own pip and setuptools need no upgrade. A HOME that cannot be written (unset,
# read-only) only disables pip's cache.
$(STAMP): $(BIN)/python pyproject.toml
	@home="$${HOME:-$$(getent passwd "$$(id -u)" | cut -d: -f6)}"; cache="$${XDG_CACHE_HOME:-$$home/.cache}"; \
	  mkdir -p "$$cache" 2>/dev/null && test -w "$$cache" || export PIP_NO_CACHE_DIR=1; \
	  echo "$(PIP) install -e '.[test]'"; $(PIP) install -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP) browser test-deps
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

# As root the attack suite plays tenants with setfacl/setfattr (Debian packages acl and attr), and
# the shipped logrotate file is checked with logrotate itself.
test-deps:
	@if [ "$$(id -u)" = 0 ] && { ! command -v setfacl >/dev/null 2>&1 || ! command -v logrotate >/dev/null 2>&1; } && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q acl attr logrotate; fi

lint: $(STAMP)
	$(BIN)/ruff check slapos tests bench tools demo docs/_ext

demo: $(STAMP)
	$(BIN)/python demo/demo.py

demo-stop: $(STAMP)
	$(BIN)/python demo/demo.py --stop

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	@$(PYTHON) tools/stage.py clean  # a copy made while this checkout was not reachable
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/_build docs/reference/generated test-artifacts

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

man: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b man docs docs/_build/man
	@ls docs/_build/man

typecheck: $(STAMP)
	$(BIN)/mypy

endif
