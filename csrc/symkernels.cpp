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

#include <string>

#include "common/simd.h"
#include "quarot/int8_dot_peak.h"
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
#if SYMKERNELS_X86_ENTRY_POINTS
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
  // A ceiling for the int8 GEMM rows of the benchmarks (symkernels/bench/harness.py): the measured rate of
  // the int8 dot-product instruction itself on `threads` threads, no memory traffic.
  m.def(
      "int8_dot_peak",
      [](const std::string& isa, int threads, double seconds, int repeats) {
        symkernels::quarot::Int8DotPeak peak;
        {
          py::gil_scoped_release release;
          peak = symkernels::quarot::measure_int8_dot_peak(isa, threads, seconds, repeats);
        }
        py::dict out;
        out["ops_per_s"] = peak.ops_per_s;
        out["ops_per_cpu_s"] = peak.ops_per_cpu_s;
        out["threads"] = peak.threads;
        out["isa"] = peak.isa;
        return out;
      },
      py::arg("isa") = "auto", py::arg("threads") = 1, py::arg("seconds") = 0.2, py::arg("repeats") = 5,
      "int8 multiply-add instruction peak (vpdpbusd, or AVX2's vpmaddubsw sequence without VNNI), ops/s over "
      "`threads` threads: a dict with ops_per_s "
      "(wall time), ops_per_cpu_s (the slowest thread's CPU time: immune to time slices lost on a shared "
      "machine), threads and isa (avx512_vnni, avx_vnni, avx512vl_vnni, avx2, or 'none: why' with rates 0). "
      "isa: auto | avx512 (zmm) | avx2 (ymm).");
}
