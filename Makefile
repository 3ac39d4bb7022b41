# Every target installs what it needs. `make test` is the one command CI runs (.ci/run).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MPLCONFIGDIR := $(CURDIR)/.venv/.mpl
export ANSIBLE_HOME := $(CURDIR)/.venv/.ansible
export ANSIBLE_LOCAL_TEMP := $(CURDIR)/.venv/.ansible/tmp

# Debian packages the lab needs on the machine that builds it (see notes/lab.md).
LAB_APT := debootstrap systemd-container dpkg-dev iproute2 curl openssh-client python3-venv \
           nftables openssl postgresql-15 procps chromium

.PHONY: setup lab-deps test test-unit test-lab lint bench plan clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# Installs the lab's host packages when we are root and they are missing; otherwise says why not.
lab-deps:
	@if [ "$$(id -u)" != 0 ]; then echo "lab-deps: not root, lab tests will be skipped"; exit 0; fi; \
	missing=""; for p in $(LAB_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "lab-deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

# The lab tests run on two labs at once (two pytest-xdist workers, each a group of modules on a lab of its own:
# tests/lab/conftest.py LAB_GROUPS). The unit tests run beside them at a lower CPU priority (the labs' hosts
# set the pace): the run takes as long as the longer lab group. The unit tests' output follows the lab tests'
# (all of it if they failed). LAB_WORKERS=0 runs every lab module in turn on one lab.
LAB_WORKERS ?= 2
test: setup lab-deps
	@mkdir -p out; \
	nice -n 10 $(BIN)/pytest -q -p no:cacheprovider --durations=10 tests/unit > out/test-unit.log 2>&1 & unit=$$!; \
	$(BIN)/pytest -q -n $(LAB_WORKERS) --durations=25 tests/lab; lab=$$?; \
	wait $$unit; unit=$$?; \
	echo "--- the unit tests, run beside the lab tests (out/test-unit.log):"; \
	if [ $$unit = 0 ]; then tail -n 14 out/test-unit.log; else cat out/test-unit.log; fi; \
	echo "--- lab tests exit $$lab, unit tests exit $$unit"; \
	[ $$lab = 0 ] && [ $$unit = 0 ]

test-unit: setup
	$(BIN)/pytest -q tests/unit

test-lab: setup lab-deps
	$(BIN)/pytest -q tests/lab

lint: setup
	$(BIN)/ruff check src tests stacks policies inventories deploys
	$(BIN)/mypy

bench: setup lab-deps
	$(BIN)/pytest -q -s tests/bench -p no:cacheprovider

plan: setup
	$(BIN)/embassy plan --stack rehearsal --out out/plan-rehearsal.json

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# The main command (root: the lab): the whole rehearsal, then its verdict, RTO, RPO and the report's path.
.PHONY: rehearsal
rehearsal: setup lab-deps
	@if [ "$$(id -u)" != 0 ]; then echo "rehearsal: the lab needs root: run \`sudo make rehearsal\`"; exit 2; fi
	$(BIN)/embassy drill --stack rehearsal --report out/rehearsal
