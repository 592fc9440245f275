.PHONY: run test lint bench cluster cluster-down cluster-test

run:  ## set up and run the whole service (web, workers, beat, flower)
	bash scripts/run.sh

test:  ## set up and run the whole test suite
	bash scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

cluster:  ## a simulated multi-host deployment in network namespaces (root); prints edge_url=…
	WITH_CLUSTER=1 bash scripts/setup.sh
	.venv/bin/python scripts/cluster.py up

cluster-down:  ## stop and remove everything `make cluster` made (idempotent)
	.venv/bin/python scripts/cluster.py down

cluster-test:  ## the scenarios of docs/deploy.md against a fresh cluster (root, ~10 min)
	WITH_CLUSTER=1 bash scripts/setup.sh
	CLUSTER_TEST=1 .venv/bin/python -m pytest tests/cluster -x -q
