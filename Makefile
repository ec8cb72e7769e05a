VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv demo test unit lint faults fuzz bench peers clean

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
# Three pytest workers (pytest-xdist): most tests wait on processes, brokers and databases, so
# three share two cores well; TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 3
test: lint
	@$(PYTEST) -n $(TEST_WORKERS) $(PYTEST_ARGS); $(NONE_COLLECTED)

# The unit tier alone: pure Python, no service, no process; well under 30 s.
unit: venv
	@$(PYTEST) tests/unit $(PYTEST_ARGS); $(NONE_COLLECTED)

# The fault, load and fuzz scenarios at their full counts (200 kill rounds, 10,000 alerts in
# 60 s, 10,000 generated requests); `make test` runs the same files with small counts.
faults: venv
	@TASKMEDIC_FAULTS=full $(PYTEST) tests/faults -m faults -p no:randomly -s $(PYTEST_ARGS); $(NONE_COLLECTED)

# The fuzzer alone at its full count (10,000 generated requests, about 4 minutes): CI runs it
# after `make test`.
fuzz: venv
	@TASKMEDIC_FAULTS=full $(PYTEST) tests/faults/test_fuzz_api.py -m faults -p no:randomly -s $(PYTEST_ARGS); $(NONE_COLLECTED)

# query-exporter, the peer the exporter benchmark compares against, lives in its own venv so
# its dependencies never mix with ours.
PEER_VENV ?= .venv-peer
$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q 'query-exporter>=5,<6' 'psycopg2-binary>=2.9'
	touch $@

# The peers of the worker-death benchmark (`python -m bench deaths`), each in its own venv:
# Flower; celery-exporter 1.2.1 from PyPI (its sdist's requirement list no longer parses, so it
# runs from the unpacked sdist with its dependencies installed beside it); danihodovic's
# celery-exporter, run from its source: CELERY_EXPORTER_SRC is a checkout or a bare git
# directory of github.com/danihodovic/celery-exporter (nothing of it is kept in this repository;
# without it that peer is skipped and the benchmark says so).
FLOWER_VENV ?= .venv-peer-flower
$(FLOWER_VENV)/.installed:
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install -q 'flower>=2.0,<3' 'celery[redis]>=5.3,<6'
	touch $@

CE_VENV ?= .venv-peer-celery-exporter
$(CE_VENV)/.installed:
	$(PYTHON) -m venv $(CE_VENV)
	$(CE_VENV)/bin/python -m pip install -q 'setuptools<66' wheel 'celery[redis]>=5.3,<6' \
		'click>=7' 'prometheus-client>=0.20'
	$(CE_VENV)/bin/python -m pip download -q --no-deps --no-build-isolation -d $(CE_VENV)/sdist \
		'celery-exporter==1.2.1'
	tar -xzf $(CE_VENV)/sdist/celery-exporter-1.2.1.tar.gz -C $(CE_VENV)
	touch $@

DANI_VENV ?= .venv-peer-danihodovic
CELERY_EXPORTER_SRC ?= /work/.mirror/danihodovic+celery-exporter/repo
$(DANI_VENV)/.installed:
	@if [ -f '$(CELERY_EXPORTER_SRC)/cli.py' ] || git --git-dir='$(CELERY_EXPORTER_SRC)' rev-parse -q --verify HEAD >/dev/null 2>&1; then \
		$(PYTHON) -m venv $(DANI_VENV) && \
		rm -rf $(DANI_VENV)/src && mkdir -p $(DANI_VENV)/src && \
		if [ -f '$(CELERY_EXPORTER_SRC)/cli.py' ]; then cp -r '$(CELERY_EXPORTER_SRC)'/. $(DANI_VENV)/src; \
		else git --git-dir='$(CELERY_EXPORTER_SRC)' archive HEAD | tar -x -C $(DANI_VENV)/src; fi && \
		$(DANI_VENV)/bin/python -m pip install -q 'celery[redis]>=5.3,<6' 'prometheus-client>=0.20' \
			'click>=8' 'pretty-errors>=1.2' 'loguru>=0.7' 'redis>=5' 'Flask>=3' 'waitress>=3' \
			'arrow>=1.3' 'timy>=0.4' && \
		touch $@; \
	else \
		echo "danihodovic/celery-exporter: no source at CELERY_EXPORTER_SRC=$(CELERY_EXPORTER_SRC) (a checkout or a bare git dir); the deaths benchmark skips that peer"; \
	fi

peers: $(PEER_VENV)/.installed $(FLOWER_VENV)/.installed $(CE_VENV)/.installed $(DANI_VENV)/.installed

bench: venv peers
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
