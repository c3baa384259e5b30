// Shared between the CPU and CUDA RNN kernels: the cell codes and the per-row math, written once.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace symkernels::jacobi {

enum Cell : int { kElmanTanh = 0, kElmanRelu = 1, kGru = 2, kLstm = 3 };

// Gates per hidden unit: u and w_hh have G = gates(cell) * H rows.
SYMKERNELS_HD int gates(int cell) { return cell == kGru ? 3 : (cell == kLstm ? 4 : 1); }

// Parts of the state per hidden unit: the LSTM's state is the pair (h, c), stored as one row [h | c] of
// width 2H (the fixed point is over both: c_t depends on c_{t−1} directly); the other cells' state is h.
// Only the h part enters the recurrent mat-vec.
SYMKERNELS_HD int state_parts(int cell) { return cell == kLstm ? 2 : 1; }

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

// LSTM unit j (gates i, f, g, o as in torch.nn.LSTM), given a = u + gh over the 4H gate values:
//   c = σ(a_f)·c_prev + σ(a_i)·tanh(a_g),  h = σ(a_o)·tanh(c).
template <typename T>
SYMKERNELS_HD void lstm_unit(const T* u, const T* gh, T c_prev, int64_t j, int64_t H, T& h, T& c) {
  const T i = sigmoid(u[j] + gh[j]);
  const T f = sigmoid(u[H + j] + gh[H + j]);
  const T g = tanh_(u[2 * H + j] + gh[2 * H + j]);
  const T o = sigmoid(u[3 * H + j] + gh[3 * H + j]);
  c = f * c_prev + i * g;
  h = o * tanh_(c);
}

// One hidden unit j of the new state (Elman, GRU; the LSTM's two-part unit is lstm_unit), given
// gh = b_hh + W_hh h_prev (all G gate values of the row) and the row's input projection u. GRU gate order
// r, z, n as in torch.nn.GRU:
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
