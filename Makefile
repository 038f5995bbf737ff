# dedicate: `make up` runs it, `make test` runs every check. Both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
CLIENTS := .venv-clients
CLIENTS3 := .venv-tg3
CLIENTS16 := .venv-tg16
DATA_DIR ?= $(CURDIR)/data
TORCH := torch==2.13.0
# A CPU build of torch: the machine's local wheel folder if it has one, else PyTorch's CPU index.
TORCH_SOURCE := $(if $(wildcard /opt/wheels/torch-2.13.0*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: up test setup clients system-deps lint unit e2e clean

up: setup
	@mkdir -p "$(DATA_DIR)"
	@$(VENV)/bin/python -m dedicate.engines.demo_model "$(DATA_DIR)/models/tiny-chat" >/dev/null
	DEDICATE_DATA_DIR="$${DEDICATE_DATA_DIR:-$(DATA_DIR)}" exec $(VENV)/bin/dedicate up

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON): apt-get install -y python3.11 python3.11-venv"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH_SOURCE) $(TORCH)
	$(VENV)/bin/pip install -q $(TORCH_SOURCE) -e '.[local,dev,ray]'
	touch $@

# The published clients that users already have, each in an environment of its own (their pins differ):
# together 2.42 (v1 API), the legacy together 1.6 SDK (v1 API) and together 3.1.1 (`tg` speaks v2).
clients: $(CLIENTS)/.installed $(CLIENTS3)/.installed $(CLIENTS16)/.installed

$(CLIENTS)/.installed: Makefile
	$(PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/pip install -q together==2.42.0
	touch $@

$(CLIENTS3)/.installed: Makefile
	$(PYTHON) -m venv $(CLIENTS3)
	$(CLIENTS3)/bin/pip install -q together==3.1.1
	touch $@

$(CLIENTS16)/.installed: Makefile
	$(PYTHON) -m venv $(CLIENTS16)
	$(CLIENTS16)/bin/pip install -q together==1.6.0
	touch $@

# PostgreSQL for the store tests (the tests start their own throwaway server) and Debian's Chromium
# for the console's browser tests (Playwright drives /usr/bin/chromium; never `playwright install`).
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: setup clients system-deps lint
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(CLIENTS) $(CLIENTS3) $(CLIENTS16) .pytest_cache .mypy_cache .ruff_cache
