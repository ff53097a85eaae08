# IDPT: every target runs inside the environment that scripts/idpt-env builds
# or reuses (a cached virtual environment, or a Debian 13 userland on hosts
# older than glibc 2.39).
#
#   make run                      the pipeline on the embedded synthetic log
#   make run DATA=PATH [FORMAT=movielens-100k] [OUT=DIR] [ARGS="--epochs 5"]
#   make test                     ruff, then the whole test suite
#   make bench | make shell | make clean-env

ENV := scripts/idpt-env
DATA ?=
FORMAT ?=
OUT ?= $(CURDIR)/idpt-runs
ARGS ?=
PYTEST_ARGS ?=

RUN_FLAGS := $(if $(DATA),--data $(DATA)) $(if $(FORMAT),--format $(FORMAT)) --output $(OUT)

.PHONY: run test lint bench shell env clean-env

run:
	$(ENV) run $(if $(DATA),--mount $(DATA)) --mount $(OUT) -- python -m tfx_pipeline.cli run $(RUN_FLAGS) $(ARGS)

test: lint
	$(ENV) run -- python -m pytest $(PYTEST_ARGS)
	$(ENV) check-mounts

lint:
	$(ENV) run -- ruff check .
	$(ENV) run -- ruff format --check .

bench:
	$(ENV) run --mount $(OUT) -- python -m tfx_pipeline.cli bench --output $(OUT) $(ARGS)

shell:
	$(ENV) shell

env:
	$(ENV) build

clean-env:
	$(ENV) clean
