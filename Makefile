# Two commands set everything up on a fresh Debian 12 + Python 3.11 machine:
#   make demo   the whole pipeline on the bundled example, in-process (no containers, no servers)
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Debian packages the tests start for real (an OCI registry on 127.0.0.1, skopeo to read it back), and the
# graph executor's tools (tests/dagger/executor: mmdebstrap builds the stand-in image, bwrap sandboxes each
# exec, iproute2 gives every service its own network namespace), and qemu-user: tests/test_qemu_cpus.py
# builds the artifact under `qemu-x86_64 -cpu Nehalem` (a real CPU without AVX, for every library at once).
APT_PACKAGES ?= git docker-registry skopeo mmdebstrap bubblewrap iproute2 qemu-user
# kserve's client, in a venv of its own: kserve 0.21.0 needs protobuf<7 and pandas<3, which constraints.txt
# pins newer (see tests/serving/kserve-requirements.txt). tests/serving/test_kserve_client.py runs it.
KSERVE_VENV  ?= .venv-kserve
KSERVE_REQS  := tests/serving/kserve-requirements.txt
KSERVE_STAMP := $(KSERVE_VENV)/.installed

.PHONY: demo test test-slow test-executed test-all venv kserve-venv system-deps bench lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,dev,parquet]"
	@touch $(STAMP)

venv: $(STAMP)

$(KSERVE_STAMP): $(KSERVE_REQS)
	@test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet -r $(KSERVE_REQS)
	@touch $(KSERVE_STAMP)

kserve-venv: $(KSERVE_STAMP)

demo: $(STAMP)
	@test -f examples/breast_cancer/data.csv || $(BIN)/python examples/breast_cancer/prepare.py
	cd examples/breast_cancer && ../../$(BIN)/mlci run
	@echo
	@echo "Run it again: every stage is a cache hit. List runs: (cd examples/breast_cancer && ../../$(BIN)/mlci runs)"

# Installs the Debian packages the suite needs when they are missing: with apt as root, otherwise it stops
# and names the command to run (nothing is installed behind a user's back with sudo).
system-deps:
	@missing=""; for pkg in $(APT_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing Debian packages the tests need:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	  else \
	    echo "make: the tests need the Debian packages$$missing; install them with:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    exit 2; \
	  fi; \
	fi

# pytest exits 5 when it collects no test: that is a failure (nothing was checked), said in so many words.
# MLCI_KSERVE_PYTHON: the kserve venv's interpreter, for tests/serving/test_kserve_client.py.
# `make test` leaves out the executed Dagger graphs (marker `executor`; `make test-executed` runs only them:
# they build a Debian root filesystem and run every container in a bwrap sandbox, root needed) and the long
# end-to-end suites (marker `slow`: local deploys with their post-deploy checks, the server under load;
# `make test-slow`). `make test-all` and .ci/run run all three.
test: $(STAMP) $(KSERVE_STAMP) system-deps
	@MLCI_KSERVE_PYTHON=$(abspath $(KSERVE_VENV)/bin/python) $(BIN)/python -m pytest -m "not executor and not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): nothing was checked"; fi; exit $$rc

test-slow: $(STAMP) $(KSERVE_STAMP) system-deps
	@MLCI_KSERVE_PYTHON=$(abspath $(KSERVE_VENV)/bin/python) $(BIN)/python -m pytest -m "slow and not executor" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-slow: pytest collected no tests (exit 5): nothing was checked"; fi; exit $$rc

test-executed: $(STAMP) system-deps
	@MLCI_EXECUTOR_REQUIRED=1 $(BIN)/python -m pytest -m executor $(PYTEST_ARGS) tests/dagger; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-executed: pytest collected no tests (exit 5): nothing was checked"; fi; exit $$rc

test-all: test test-slow test-executed

bench: $(STAMP)
	$(BIN)/python bench/bench_pipeline.py

lint: $(STAMP)
	$(BIN)/ruff check mlci model serving monitor tests bench

typecheck: $(STAMP)
	$(BIN)/mypy mlci model serving monitor

clean:
	rm -rf $(VENV) $(KSERVE_VENV) examples/*/.mlci .pytest_cache
