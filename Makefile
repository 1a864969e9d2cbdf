# bridgeport: `make demo` and `make test` are the two commands a newcomer needs (as root).
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test lint unit kernel kube-build helm-build dev-cluster dev-cluster-down demo demo-standalone \
        bench bench-smoke golden clean e2e-kind e2e-kind-down

setup:
	@bash hack/setup.sh

lint: setup
	$(PY) -m ruff check --output-format concise operator tests bench
	$(PY) -m ruff format --check --quiet operator tests bench
	$(PY) -m mypy
	.venv/bin/lint-imports
	shellcheck -x hack/*.sh hack/kube/*.sh hack/kind/*.sh tests/e2e/*.sh

unit: setup
	$(PY) -m pytest -q -m "not root and not apiserver and not docker"

kernel: setup
	$(PY) -m pytest -q -m "root and not apiserver and not docker"

## Kubernetes from the Go module proxy (first run ~6 min on 2 cores; cached afterwards).
kube-build: setup
	@bash hack/kube/build.sh

## helm v3 from the Go module proxy (first run ~4 min; cached afterwards).
helm-build: setup
	@bash hack/helm.sh >/dev/null

## A local control plane on 127.0.0.1:6443 (admin kubeconfig: see `hack/kube/cluster.sh env`).
dev-cluster: kube-build
	@bash hack/kube/cluster.sh up

dev-cluster-down:
	@bash hack/kube/cluster.sh down

## The full suite: lint, type check, layering contract, unit, kernel and API tests, then the
## kind end-to-end suite (image, chart, real kubelets; everything built offline, see README).
test: lint kube-build helm-build
	$(PY) -m pytest -q
	$(PY) bench/smoke.py
	@bash hack/kind/e2e.sh

## kind end-to-end only: builds kind, node and component images, the bridgeport image, runs
## tests/e2e/test_e2e.py + test_kind.py + helm test on a 3-node dual-stack cluster (as root).
e2e-kind: setup kube-build helm-build
	@bash hack/kind/e2e.sh

## Remove a cluster kept with KEEP_CLUSTER=1 (and the test-owned Docker daemon and netns).
e2e-kind-down:
	@bash hack/kind/dockerd.sh down

## Every benchmark in bench/ at a tiny size: fails if one crashes (never a timing check).
bench-smoke: kube-build
	$(PY) bench/smoke.py

## The Kubernetes demo (local control plane; the first run builds Kubernetes, ~6 min).
demo: kube-build
	@bash hack/demo.sh

## The same data plane without a cluster: an agent reading examples/ from a directory.
demo-standalone: setup
	@bash hack/demo-standalone.sh

bench: setup
	$(PY) bench/dataplane.py

golden: setup
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/core/test_golden.py

clean:
	-$(PY) -m bridgeport agent --cleanup
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
