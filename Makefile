# symkernels — the README's two commands, `make demo` and `make test`, and the tools around them.
# Every target works from a fresh clone: it creates .venv, installs torch (the pinned CPU build, only
# when no torch is present), the Python dependencies and the package, then runs its job.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
TORCH_PIN   ?= torch==2.13.0
# What the tests and benchmarks import besides torch (see pyproject.toml's extras).
EXTRAS      ?= triton,test,bench,e3nn,quarot-real,examples
PYTEST_ARGS ?=
GPU_PYTHON  ?= python3

export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test bench setup build check-cuda check-gpu-compile sanitize gpu-check clean

# PyTorch backs large CPU allocations with huge pages under THP_MEM_ALLOC_ENABLE=1; without it every
# out-of-place op (ours and the peers alike) spends most of its time in 4 KiB page faults of new outputs.
BENCH_ENV   ?= THP_MEM_ALLOC_ENABLE=1

demo: build  ## correctness + speed table of every op on this device
	$(BENCH_ENV) $(PY) -m symkernels.bench --quick

test: build  ## the full test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: build  ## the full benchmark sweeps; results under bench/results/<device>/
	$(BENCH_ENV) $(PY) -m symkernels.bench

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch goes in first and pinned: left to pip's resolver (a bare `torch`, or an unpinned requirement of
# another package) it takes the newest CUDA build, gigabytes of wheels, on a CPU-only machine. Once a
# torch is present every `torch>=…` requirement below is already satisfied and nothing more is fetched.
$(VENV)/.deps: pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_PIN)"
	$(PIP) install setuptools wheel pybind11 ninja cmake
	$(PIP) install --no-build-isolation -e ".[$(EXTRAS)]"
	@touch $@

setup: $(VENV)/.deps

# Incremental native build (CMake + Ninja through setup.py) into the source tree, where the editable
# install imports it from. Removing the old .so first makes a switch between the sanitizer build and
# the normal one always relink.
build: setup
	@rm -f symkernels/_C*.so
	$(PY) setup.py -q build_ext --inplace

check-cuda: setup  ## nvcc -c every .cu, syntax-check every CUDA glue .cpp (no GPU needed)
	tools/check_cuda_sources.sh $(PY)

# Every Triton kernel as the launchers specialise it at benchmark and largest shapes, compiled ahead of time
# for sm_90 and sm_80 (no GPU needed): fails on a compile error, shared memory over the limit or a spill.
# Table: bench/results/gpu-compile/; compiled kernels are kept in build/triton-cache between runs.
check-gpu-compile: setup
	$(PY) tools/gpu_compile_gate.py

# The CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer. The interpreter itself is not
# instrumented, so ASan's runtime is preloaded; CPython's own arena allocations are not leaks of ours.
sanitize: setup
	@rm -f symkernels/_C*.so
	SYMKERNELS_SANITIZE=1 $(PY) setup.py -q build_ext --inplace
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  sh -c '$(PY) -c "import symkernels; assert \"sanitizers\" in symkernels.build_info(), \"not the ASan build\"" && \
	  $(PY) -m pytest -q -x -k "not triton and not compile" $(PYTEST_ARGS)'; status=$$?; \
	rm -f symkernels/_C*.so; $(PY) setup.py -q build_ext --inplace; exit $$status

# On a GPU machine, with its own torch (a CUDA build; no venv, offline): build with CUDA, run the whole
# suite on CUDA, then the benchmarks; logs and results land under bench/results/<gpu>/.
gpu-check:
	$(GPU_PYTHON) -m pip install --no-build-isolation --no-deps -e .
	$(GPU_PYTHON) -c "import symkernels, json; print(json.dumps(symkernels.build_info(), indent=1)); \
	  assert symkernels.backends()['cuda'].available, symkernels.backends()['cuda'].reason"
	@dev=$$($(GPU_PYTHON) -c "from symkernels.bench.harness import device_name; import torch; print(device_name(torch.device('cuda')))"); \
	mkdir -p bench/results/$$dev; \
	$(GPU_PYTHON) -m pytest -q -rs $(PYTEST_ARGS) 2>&1 | tee bench/results/$$dev/tests.log; \
	$(BENCH_ENV) $(GPU_PYTHON) -m symkernels.bench --device cuda 2>&1 | tee bench/results/$$dev/bench.md

clean:
	rm -rf build symkernels/_C*.so *.egg-info
