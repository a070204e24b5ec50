# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV := .venv
STAMP := $(VENV)/.installed-stamp
# The MCP SDK 1.x (experimental tasks) for the task tests' peers: a venv of its own.
MCP1_VENV := .venv-mcp1
MCP1_STAMP := $(MCP1_VENV)/.installed-stamp

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	@if [ ! -x $(VENV)/bin/python ]; then \
	  py=$$(scripts/find-python.sh) || exit 1; \
	  echo "creating $(VENV) with $$py"; \
	  "$$py" -m venv $(VENV); \
	fi
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

$(MCP1_STAMP): scripts/mcp1-requirements.txt
	@if [ ! -x $(MCP1_VENV)/bin/python ]; then \
	  py=$$(scripts/find-python.sh) || exit 1; \
	  echo "creating $(MCP1_VENV) with $$py"; \
	  "$$py" -m venv $(MCP1_VENV); \
	fi
	$(MCP1_VENV)/bin/python -m pip install --quiet -r scripts/mcp1-requirements.txt
	@touch $(MCP1_STAMP)

run: $(STAMP)
	$(VENV)/bin/python scripts/run_demo.py

test: $(STAMP) $(MCP1_STAMP)
	scripts/system-deps.sh
	$(VENV)/bin/ruff check addons tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check addons tests scripts
	$(VENV)/bin/ruff format --check addons tests scripts

bench: $(STAMP)
	$(VENV)/bin/python scripts/bench.py

clean:
	rm -rf $(VENV) $(MCP1_VENV) build *.egg-info addons/*.egg-info
