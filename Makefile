# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV := .venv
STAMP := $(VENV)/.installed-stamp

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

run: $(STAMP)
	$(VENV)/bin/python scripts/run_demo.py

test: $(STAMP)
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
	rm -rf $(VENV) build *.egg-info addons/*.egg-info
