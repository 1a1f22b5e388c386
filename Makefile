# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test compose-cli browser up down run venv lock bench clean

demo: up ## set up, start Airflow + MLflow, run the DAG once through the scheduler, leave the UIs up
	$(BIN)/python scripts/demo.py

test: $(STAMP) $(if $(shell command -v docker-compose),,compose-cli) browser ## set up, then run the whole test suite
	$(BIN)/python -m pytest

compose-cli: ## Debian's docker-compose, which tests/topology validates docker-compose.yaml with (no engine needed)
	apt-get install -y -q --no-install-recommends docker-compose || { apt-get update -q && apt-get install -y -q --no-install-recommends docker-compose; } || echo "could not install docker-compose (needs root and apt): tests/topology skips its compose checks"

browser: ## Debian's chromium + chromedriver, which tests/serving/test_browser.py drives (installed only if missing)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; } || echo "could not install chromium (needs root and apt): tests/serving/test_browser.py skips, and fails under CI=true"

up: $(STAMP) ## start Airflow (api-server :8080, scheduler, dag-processor, triggerer) and MLflow UI (:5000)
	scripts/airflow_stack.sh up

down: ## stop exactly what `make up` started
	scripts/airflow_stack.sh down

run: $(STAMP) ## run the pipeline once without Airflow (python main.py)
	$(BIN)/python main.py

venv: $(STAMP)

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps -r requirements.txt
	$(BIN)/pip check
	touch $@

lock: ## re-resolve requirements.in into the fully pinned requirements.txt
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip && .venv-lock/bin/pip install --quiet -r requirements.in
	{ echo "# Full pinned set resolved from requirements.in on Python 3.11 (make lock)."; \
	  .venv-lock/bin/pip freeze; } > requirements.txt
	rm -rf .venv-lock

bench: $(STAMP) ## pipeline scaling benchmark (minutes; see docs/benchmarks.md)
	$(BIN)/python bench/pipeline_scaling.py

clean: down ## stop the stack, remove run outputs (artifacts, MLflow store, Airflow home); keeps .venv
	rm -rf artifacts mlruns airflow_home

# shellcheck lints serving/deploy/user-data.sh in tests/serving/test_deploy_assets.py: a hard requirement of
# `make test` (the test fails without it), installed from apt when missing (sudo unless root).
.PHONY: shellcheck
test: $(if $(shell command -v shellcheck),,shellcheck)
shellcheck:
	$(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get install -y -q --no-install-recommends shellcheck || { apt-get update -q && apt-get install -y -q --no-install-recommends shellcheck; }'
	@command -v shellcheck >/dev/null || { echo "shellcheck is required by make test: install it (apt-get install shellcheck)"; exit 1; }
