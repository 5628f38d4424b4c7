# make test: set up .venv (CUDA 13.0 build of torch 2.14.1 + test tools, ONNX and ONNX Runtime for
# the export tests), build, run the tests.
# make bench: the same set-up and matplotlib, then the fused-vs-torch.nn benchmark (ONNX Runtime as a
# third column on the CPU; make bench-concurrency: under concurrent callers and oversubscription;
# make bench-double-backward: gradgradcheck, a gradient-penalty step, torch.func.grad).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
MAX_JOBS ?= 2

.PHONY: test bench bench-concurrency bench-double-backward build clean

$(VENV)/.installed:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC) setuptools wheel ninja pybind11 pytest pytest-benchmark \
		scikit-learn onnx onnxruntime onnxscript
	touch $@

build: $(VENV)/.installed
	MAX_JOBS=$(MAX_JOBS) $(PY) setup.py --quiet build_ext --inplace

test: build
	$(PY) -m pytest tests

# matplotlib draws bench's speedup plot; only the benchmark needs it.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet matplotlib
	touch $@

bench: build $(VENV)/.bench-installed
	$(PY) -m fusedrnn.bench

# fusedrnn against torch.nn with 1, 2 and 4 concurrent callers, pinned to one CPU, two processes.
bench-concurrency: build
	PYTHONPATH=. $(PY) benchmarks/concurrency.py

# fusedrnn against torch.nn: gradgradcheck of small modules, a gradient-penalty training step.
bench-double-backward: build
	PYTHONPATH=. $(PY) benchmarks/double_backward.py

clean:
	rm -rf build fusedrnn/_C*.so fusedrnn/libfusedrnn.so
