# Two commands: `make run` and `make test`. Each installs what it is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LISTEN ?= 127.0.0.1:8080
UPSTREAM ?=
IMAGE ?= oci-referrers-proxy:dev
# Finds a Docker engine (DOCKER_HOST, the system socket) or, as root, starts a private one.
ENGINE := deploy/local-images/engine.sh

export DEBIAN_FRONTEND := noninteractive

# $(call need,BINARY,DEBIAN_PACKAGE): install the package with apt when the binary is absent.
define need
	@if ! command -v $(1) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "$(1) is missing: install Debian's $(2) (apt-get install $(2))" >&2; exit 1; fi; \
	  echo "installing $(2) (for $(1))"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(2) >/dev/null; \
	fi
endef

# $(call want,BINARY,DEBIAN_PACKAGE): like need, but only a note when it cannot be installed
# (the tests that use it then skip and say why).
define want
	@if ! command -v $(1) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "note: $(1) is missing (Debian's $(2)): the container tests will skip" >&2; exit 0; fi; \
	  echo "installing $(2) (for $(1))"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(2) >/dev/null; \
	fi
endef

.PHONY: run test lint soak bench test-system-deps container-deps image engine-stop clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
ifeq ($(strip $(UPSTREAM)),)
	$(call need,docker-registry,docker-registry)
	$(BIN)/python -m proxy.devstack --listen $(LISTEN)
else
	$(BIN)/referrers-proxy serve --upstream $(UPSTREAM) --listen $(LISTEN)
endif

test-system-deps:
	$(call need,docker-registry,docker-registry)
	$(call need,redis-server,redis-server)
	$(call need,redis-cli,redis-tools)
	$(call need,skopeo,skopeo)
	$(call need,openssl,openssl)
	$(call need,curl,curl)
	$(call need,wrk,wrk)
	$(call need,hey,hey)
	$(call need,nginx,nginx)

# A Docker engine, and the tools that build the images without an image registry.
container-deps:
	$(call want,dockerd,docker.io)
	$(call want,mmdebstrap,mmdebstrap)
	$(call want,docker-compose,docker-compose)

# The proxy image (and the local Debian bases it builds on); deploy/local-images/build.sh.
image: $(VENV)/.run-installed container-deps
	host="$$($(ENGINE))" && DOCKER_HOST="$$host" PIP=$(BIN)/pip deploy/local-images/build.sh $(IMAGE)

# Stops the private dockerd that `make image` or the container tests started; images stay.
engine-stop:
	$(ENGINE) stop

lint: $(VENV)/.test-installed
	$(BIN)/ruff check proxy tests bench deploy
	$(BIN)/ruff format --check proxy tests bench deploy
	$(BIN)/mypy --strict proxy

# The tests' files, the registries' storage among them, in RAM where /dev/shm is a writable
# tmpfs with 4 GiB free (the suite peaked at 1.1 GiB): Distribution fsyncs every file it writes
# (strace: ~5 fsyncs a manifest PUT), and on a disk the 20,000-referrer test took 138-197 s
# instead of 87. Elsewhere (a container's 64 MiB /dev/shm) pytest's own temporary directory.
# Removed after a passing run only.
SHM_NEED_KIB := 4194304
TEST_TMP ?= $(shell d=/dev/shm; [ -d $$d ] && [ -w $$d ] \
  && [ "$$(stat -f -c %T $$d)" = tmpfs ] \
  && [ "$$(df -Pk $$d | awk 'NR==2 {print $$4}')" -ge $(SHM_NEED_KIB) ] \
  && echo $$d/referrers-proxy-tests-$$(printf %s '$(CURDIR)' | cksum | cut -d' ' -f1))
test: lint test-system-deps container-deps
	$(BIN)/pytest -ra --durations=12 $(if $(TEST_TMP),--basetemp=$(TEST_TMP))
	$(if $(TEST_TMP),rm -rf $(TEST_TMP))

# The long soak: mixed traffic through a real proxy for SOAK_SECONDS, then a summary table.
SOAK_SECONDS ?= 120
SOAK_CONNECTIONS ?= 300
SOAK_KEEP ?= 40
SOAK_REPOS ?= 8
soak: $(VENV)/.test-installed test-system-deps
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS) --connections $(SOAK_CONNECTIONS) \
	  --keep $(SOAK_KEEP) --repos $(SOAK_REPOS)

# Each scenario direct and through the proxy, interleaved over rounds; a table of medians and
# ratios, JSON in bench/results/latest.json. BENCH_ARGS="--quick" for a smoke, "--only blobs" etc.
BENCH_ARGS ?=
bench: $(VENV)/.test-installed test-system-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
