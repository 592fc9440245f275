.PHONY: run test lint bench

run:  ## set up and run the whole service (web, workers, beat, flower)
	bash scripts/run.sh

test:  ## set up and run the whole test suite
	bash scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
