// Shared between the CPU and CUDA RNN kernels: the cell codes and the per-row math, written once.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace symkernels::jacobi {

enum Cell : int { kElmanTanh = 0, kElmanRelu = 1, kGru = 2 };

// Gates per hidden unit: u and w_hh have G = gates(cell) * H rows.
SYMKERNELS_HD int gates(int cell) { return cell == kGru ? 3 : 1; }

// Explicit float/double overloads: an unqualified tanh(float) may resolve to the double C function on the
// host, which would round differently from torch's float tanh; tanhf/expf exist on host and device.
SYMKERNELS_HD float tanh_(float x) { return tanhf(x); }
SYMKERNELS_HD double tanh_(double x) { return tanh(x); }
SYMKERNELS_HD float exp_(float x) { return expf(x); }
SYMKERNELS_HD double exp_(double x) { return exp(x); }

template <typename T>
SYMKERNELS_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// One hidden unit j of the new state, given gh = b_hh + W_hh h_prev (all G gate values of the row) and
// the row's input projection u. GRU gate order r, z, n as in torch.nn.GRU:
//   r = σ(u_r + gh_r), z = σ(u_z + gh_z), n = tanh(u_n + r·gh_n), h = (1 − z)·n + z·h_prev.
template <typename T>
SYMKERNELS_HD T cell_unit(int cell, const T* u, const T* gh, const T* h_prev, int64_t j, int64_t H) {
  if (cell == kElmanTanh) return tanh_(u[j] + gh[j]);
  if (cell == kElmanRelu) {
    const T a = u[j] + gh[j];
    return a > T(0) ? a : (a != a ? a : T(0));  // NaN propagates, like torch.relu
  }
  const T r = sigmoid(u[j] + gh[j]);
  const T z = sigmoid(u[H + j] + gh[H + j]);
  const T n = tanh_(u[2 * H + j] + r * gh[2 * H + j]);
  return (T(1) - z) * n + z * h_prev[j];
}

}  // namespace symkernels::jacobi
