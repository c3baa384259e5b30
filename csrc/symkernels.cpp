// The symkernels op library. Each op schema is declared once, in its pillar's csrc/<pillar>/schema.cpp
// (a TORCH_LIBRARY_FRAGMENT of this library), beside the kernels that implement it: pillars are built
// and reviewed independently, and no central list has to be edited when one adds an op. Kernels
// register per dispatch key in csrc/<pillar>/<op>_cpu.cpp (CPU) and <op>_cuda.cpp (CUDA); autograd and
// fake (meta) kernels are registered from Python (symkernels/<pillar>/ops.py), next to the public API.
//
// The pybind11 module carries only non-tensor helpers (build info): tensor ops go through the
// dispatcher so that torch.compile, opcheck and export see them.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "common/simd.h"
#ifdef SYMKERNELS_WITH_CUDA
#include "common/cuda_build_info.h"
#endif

#ifndef SYMKERNELS_CUDA_ARCHES
#define SYMKERNELS_CUDA_ARCHES ""
#endif

// Owns the namespace; the schemas live in the pillars' fragments.
TORCH_LIBRARY(symkernels, m) {}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "symkernels native build: op registrations (loaded for their side effect) and build info";
  m.def("build_info", []() {
    py::dict info;
#ifdef SYMKERNELS_WITH_CUDA
    info["cuda"] = true;
    info["cuda_arches"] = SYMKERNELS_CUDA_ARCHES;  // what torch's CMake was asked for: "sm_80 sm_90a"
    info["cuda_arches_compiled"] = symkernels::compiled_cuda_arches();  // what nvcc built: "800,900"
#else
    info["cuda"] = false;
    info["cuda_arches"] = "";
    info["cuda_arches_compiled"] = "";
#endif
    info["simd"] = symkernels::simd::runtime_simd_level();
#if defined(__x86_64__) && !defined(SYMKERNELS_NO_SIMD_CLONES)
    info["simd_compiled"] = py::make_tuple("avx512", "avx2", "sse2");
#else
    info["simd_compiled"] = py::make_tuple("scalar");
#endif
#ifdef _OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
#ifdef SYMKERNELS_SANITIZE
    info["sanitizers"] = SYMKERNELS_SANITIZE;
#endif
    info["compiler"] = __VERSION__;
    info["torch_compiled"] = SYMKERNELS_TORCH_VERSION;
    return info;
  });
}
