VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m exporter.demo

lint: venv
	$(VENV)/bin/ruff check exporter healer tests bench
	$(VENV)/bin/ruff format --check exporter healer tests bench
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: that is a failure here, loudly.
test: lint
	@$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "FATAL: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: venv
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
