# Two commands do all the setup on a fresh machine (Python 3.11, Node 20, pip, npm):
#   make demo   - the local demo: moto server on 127.0.0.1, a seeded fleet, the real handlers, the reports
#   make test   - the whole suite: lint, format, layering, types, unit/integration/infra/e2e tests
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: setup demo test lint typecheck bench bench-org synth deploy destroy org-synth org-deploy org-destroy clean schema

$(STAMP): requirements.txt requirements-dev.txt functions/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy functions/imds_enforcer imds_enforcer_cli infra app.py emulator demo bench

test: lint typecheck
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench

# The organization audit: 20 accounts x 3 regions x 200 instances on moto, parallel next to serial (minutes).
bench-org: setup
	$(BIN)/python -m bench.bench_org

synth: setup
	$(BIN)/python app.py

node_modules/.bin/cdk: package.json package-lock.json
	npm ci --no-audit --no-fund

# Deploy needs real AWS credentials (default chain) and a bootstrapped account: `npx cdk bootstrap` once.
deploy: setup node_modules/.bin/cdk
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk deploy --all --require-approval broadening

destroy: setup node_modules/.bin/cdk
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk destroy --all

# Organization mode (README, "Organization rollout"): run with the management account's (or a delegated
# administrator's) credentials. The organization's keys come from cdk.json or ORG_CONTEXT='-c key=value ...'.
ORG_CONTEXT ?=
org-synth: setup node_modules/.bin/cdk
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk synth --quiet -c deployment=organization $(ORG_CONTEXT)

org-deploy: setup node_modules/.bin/cdk
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk deploy --all --require-approval broadening -c deployment=organization $(ORG_CONTEXT)

org-destroy: setup node_modules/.bin/cdk
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk destroy --all -c deployment=organization $(ORG_CONTEXT)

clean:
	rm -rf build cdk.out .pytest_cache .mypy_cache .ruff_cache

# Regenerate the published report's JSON Schema (a test fails when it is stale).
schema: setup
	$(BIN)/python -c "import json; from imds_enforcer.domain.report import report_json_schema; print(json.dumps(report_json_schema(), indent=2, sort_keys=True))" > docs/report-schema.json
