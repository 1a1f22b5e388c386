# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test tools up down serve run keys venv lock bench bench-serving clean
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Debian packages the tests drive: docker-compose validates docker-compose.yaml (no engine needed),
# chromium + chromium-driver run the prediction form in a browser, shellcheck lints the EC2 user data.
TEST_TOOLS := docker-compose:docker-compose chromium:chromium chromedriver:chromium-driver shellcheck:shellcheck nginx:nginx wrk:wrk

# The demo's monitor run reads its own traffic: the server closes capture files within seconds (default 300).
demo: export SERVING_CAPTURE_ROTATE_SECONDS ?= 5
demo: up ## set up, start Airflow + MLflow, run the DAG once through the scheduler, leave the UIs up
	$(BIN)/python scripts/demo.py

# The suite on pytest-xdist workers; tests that share a running stack stay together (tests/support/distribution.py).
TEST_WORKERS ?= 3
test: $(STAMP) tools ## set up, then ruff (lint), lint-imports (the dependency rule), the whole test suite
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

tools: ## install the missing TEST_TOOLS from apt (root or sudo)
	@missing="$(foreach t,$(TEST_TOOLS),$(if $(shell command -v $(firstword $(subst :, ,$(t)))),,$(lastword $(subst :, ,$(t)))))"; \
	if [ -n "$$(echo $$missing)" ]; then \
	  echo "installing $$missing"; \
	  $(SUDO) apt-get install -y -q --no-install-recommends $$missing || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; } || \
	  echo "could not install $$missing: the tests that need them skip, and fail under CI=true"; \
	fi

up: $(STAMP) ## start Airflow (api-server :8080, scheduler, dag-processor, triggerer), MLflow UI (:5000) and the prediction server, on loopback only
	scripts/airflow_stack.sh up

down: ## stop exactly what `make up` started
	scripts/airflow_stack.sh down

serve: $(STAMP) ## prediction server on the champion, on loopback, in the foreground (make run first); CONFIG_DIR=examples/<name>
	$(BIN)/python main.py serve $(if $(CONFIG_DIR),--config-dir $(CONFIG_DIR))

keys: $(STAMP) ## the bundle-signing key pair in keys/ (made on first use by run/up/serve too); prints the public key
	$(BIN)/python main.py keys

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
	$(BIN)/python -m bench.pipeline_scaling

bench-serving: $(STAMP) ## prediction server vs `mlflow models serve` and MLServer with wrk (~15 min; see docs/benchmarks.md)
	@command -v wrk >/dev/null || $(SUDO) apt-get install -y -q wrk || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q wrk; }
	$(BIN)/python -m bench.prediction_server $(BENCH_ARGS)

clean: down ## stop the stack, remove run outputs (artifacts, MLflow store, Airflow home, model store); keeps .venv
	rm -rf artifacts mlruns airflow_home models
