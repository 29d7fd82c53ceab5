# Every target sets itself up: a fresh machine needs only python3.11 and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Everything the tests need: training (torch), export, both deployment runtimes, Ray, PostgreSQL, dev tools.
EXTRAS := train,export,runtime,openvino,dev,lite12,faiss,postgres,ray
SHELL  := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: demo test lint typecheck unit browser-deps db-deps bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --progress-bar off -c constraints.txt -e '.[$(EXTRAS)]' 2>&1 \
	  | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	$(PY) -c 'import defectmap, torch, timm, torchvision, onnxscript, onnxruntime, openvino, psycopg, ray.data'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/defectmap demo --out runs/demo

browser-deps:
	@bash scripts/ensure-chromium.sh

db-deps:
	@bash scripts/ensure-postgres.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/defectmap

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: $(STAMP) browser-deps db-deps lint typecheck unit

bench: $(STAMP)
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/bottle.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
