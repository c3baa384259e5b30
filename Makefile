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
# The versions `make test` was last green with (`make lock` rewrites it). Every install goes through it, so
# a fresh clone gets what was tested, not whatever was released since; `make test-latest` runs without it.
CONSTRAINTS ?= constraints.txt
PIP_INSTALL := $(PIP) install $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
PYTEST_ARGS ?=
GPU_PYTHON  ?= python3

export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test test-latest lock bench setup build check-cuda check-gpu-compile cuda-arches sanitize gpu-check clean

# PyTorch backs large CPU allocations with huge pages under THP_MEM_ALLOC_ENABLE=1; without it every
# out-of-place op (ours and the peers alike) spends most of its time in 4 KiB page faults of new outputs.
BENCH_ENV   ?= THP_MEM_ALLOC_ENABLE=1

demo: build  ## correctness + speed table of every op on this device
	$(BENCH_ENV) $(PY) -m symkernels.bench --quick

test: build  ## the full test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite against the newest release of every dependency (torch stays pinned: it is the one we build
# against), in a venv made afresh, so drift is found by a command rather than by a user. Green here and in
# `make test`: `make lock` (in that venv: VENV=.venv-latest) records the new versions.
test-latest:
	rm -rf .venv-latest
	$(MAKE) test VENV=.venv-latest CONSTRAINTS=

# Rewrite the lock from the current .venv (run after `make test` is green with it). torch is pinned by
# TORCH_PIN instead (its local-version tag differs between the CPU and CUDA builds), pip by the venv.
lock:
	$(PIP) freeze --all --exclude-editable --exclude torch --exclude pip | LC_ALL=C sort -f >$(CONSTRAINTS).new
	@{ echo "# Versions make test was green with (make lock; torch: TORCH_PIN in the Makefile)."; \
	   cat $(CONSTRAINTS).new; } >$(CONSTRAINTS) && rm $(CONSTRAINTS).new
	@echo "wrote $(CONSTRAINTS): $$(grep -vc '^#' $(CONSTRAINTS)) pinned packages"

bench: build  ## the full benchmark sweeps; results under bench/results/<device>/
	$(BENCH_ENV) $(PY) -m symkernels.bench

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch goes in first and pinned: left to pip's resolver (a bare `torch`, or an unpinned requirement of
# another package) it takes the newest CUDA build, gigabytes of wheels, on a CPU-only machine. Once a
# torch is present every `torch>=…` requirement below is already satisfied and nothing more is fetched.
$(VENV)/.deps: pyproject.toml $(CONSTRAINTS) | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_PIN)"
	$(PIP_INSTALL) setuptools wheel pybind11 ninja cmake
	$(PIP_INSTALL) --no-build-isolation -e ".[$(EXTRAS)]"
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

# The arches a CUDA build here would compile for (TORCH_CUDA_ARCH_LIST, else the visible GPUs, else the
# default list) and the nvcc flags torch's CMake makes of them; no GPU needed. Try
# `make cuda-arches CUDA_ARCHES_ARGS="--capability 9.0"` or TORCH_CUDA_ARCH_LIST="8.0;9.0a" make cuda-arches.
CUDA_ARCHES_ARGS ?=
cuda-arches: setup
	$(PY) tools/cuda_arches.py $(CUDA_ARCHES_ARGS)

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

# On a GPU machine, with its own torch (a CUDA build; no venv, offline): tools/gpu_check.sh builds for the
# visible GPU, runs the GPU smoke suite, compute-sanitizer and the quick benchmarks in stages with their own
# time budgets (under 9 minutes in all); a second call continues after a timeout. Results and logs:
# bench/results/<gpu>/gpu-check/. GPU_CHECK_ARGS="--dry-run" prints the plan; "--reset" starts over.
GPU_CHECK_ARGS ?=
gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) tools/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf build symkernels/_C*.so *.egg-info
