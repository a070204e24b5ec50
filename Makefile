# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV := .venv
STAMP := $(VENV)/.installed-stamp
# The MCP SDK 1.x (experimental tasks) for the task tests' peers: a venv of its own.
MCP1_VENV := .venv-mcp1
MCP1_STAMP := $(MCP1_VENV)/.installed-stamp
# The hot modules compiled with mypyc (scripts/build_compiled.py; optional: without a C
# compiler it says so and the pure modules run). build/compiled.d, written by the build,
# makes the stamp depend on every source the compiled code was built from.
COMPILED := build/compiled.stamp
-include build/compiled.d

# `make run PORT=8090 UPSTREAM_PORT=9010 ADMIN_PORT=8191` when the default ports are taken.
PORT ?= 8080
UPSTREAM_PORT ?= 9000
ADMIN_PORT ?= 8181
WEB_PORT ?= 8081
DEMO_PORTS = --port $(PORT) --upstream-port $(UPSTREAM_PORT) --admin-port $(ADMIN_PORT)

.PHONY: run web test lint bench clean

$(STAMP): pyproject.toml
	@if [ ! -x $(VENV)/bin/python ]; then \
	  py=$$(scripts/find-python.sh) || exit 1; \
	  echo "creating $(VENV) with $$py"; \
	  "$$py" -m venv $(VENV); \
	fi
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test,compile]'
	@touch $(STAMP)

$(MCP1_STAMP): scripts/mcp1-requirements.txt
	@if [ ! -x $(MCP1_VENV)/bin/python ]; then \
	  py=$$(scripts/find-python.sh) || exit 1; \
	  echo "creating $(MCP1_VENV) with $$py"; \
	  "$$py" -m venv $(MCP1_VENV); \
	fi
	$(MCP1_VENV)/bin/python -m pip install --quiet -r scripts/mcp1-requirements.txt
	@touch $(MCP1_STAMP)

$(COMPILED): $(STAMP) scripts/build_compiled.py
	$(VENV)/bin/python scripts/build_compiled.py

run: $(STAMP) $(COMPILED)
	$(VENV)/bin/python scripts/run_demo.py $(DEMO_PORTS)

# The same demo in mitmweb: the flows, their decisions, Resume/Abort on held calls.
web: $(STAMP) $(COMPILED)
	$(VENV)/bin/python scripts/run_demo.py --web $(DEMO_PORTS) --web-port $(WEB_PORT)

test: $(STAMP) $(MCP1_STAMP) $(COMPILED)
	scripts/system-deps.sh
	$(VENV)/bin/ruff check addons tests scripts
	$(VENV)/bin/ruff format --check addons tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check addons tests scripts
	$(VENV)/bin/ruff format --check addons tests scripts

bench: $(STAMP) $(COMPILED)
	$(VENV)/bin/python scripts/bench.py

clean:
	rm -rf $(VENV) $(MCP1_VENV) build *.egg-info addons/*.egg-info
