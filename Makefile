VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv demo test unit lint faults bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m demo

lint: venv
	$(VENV)/bin/ruff check exporter healer demo tests bench
	$(VENV)/bin/ruff format --check exporter healer demo tests bench
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: that is a failure here, loudly.
PYTEST = $(PY) -m pytest -p no:cacheprovider
NONE_COLLECTED = rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "FATAL: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Every tier: tests/unit, tests/integration, tests/acceptance (the testpaths).
test: lint
	@$(PYTEST) $(PYTEST_ARGS); $(NONE_COLLECTED)

# The unit tier alone: pure Python, no service, no process; well under 30 s.
unit: venv
	@$(PYTEST) tests/unit $(PYTEST_ARGS); $(NONE_COLLECTED)

# The fault, load and fuzz scenarios at their full counts (200 kill rounds, 10,000 alerts in
# 60 s, 10,000 generated requests); `make test` runs the same files with small counts.
faults: venv
	@TASKMEDIC_FAULTS=full $(PYTEST) tests/faults -m faults -p no:randomly -s $(PYTEST_ARGS); $(NONE_COLLECTED)

# query-exporter, the peer the exporter benchmark compares against, lives in its own venv so
# its dependencies never mix with ours.
PEER_VENV ?= .venv-peer
$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q 'query-exporter>=5,<6' 'psycopg2-binary>=2.9'
	touch $@

bench: venv $(PEER_VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
