// CPU Jacobi iteration epilogue of the autoregressive samplers (symkernels/jacobi/modules.py: MADE, PixelCNN):
// from the network output and the pre-drawn noise, the samples of a range of columns, compared with the
// iterate and written into it in one pass — the sampling step and the solver's commit (jacobi_commit) fused.
// As separate steps they were ~10 tensor ops per iteration (two strided gathers, sigmoid, compare, cast, the
// commit), each with its own dispatch, temporary and pass over the rows, run with caches the network's
// forward has just flushed: together ~4× the commit alone.
//
// Bernoulli samples take their noise as logit thresholds (x = 1 iff logit > logit(u), u < sigmoid(logit)
// without a transcendental per iteration: the samplers take the logit of the noise once per call). A whole-
// output sigmoid was ~40% of this op after a forward (18 of 45 µs, B = 200, D = 64).
//
// Exactness: the sample of column d must be bitwise the same whichever columns a call asks for (one in a
// sequential step, all unfrozen ones in a Jacobi iteration) and the same as the tensor-op path
// (symkernels.jacobi.reference.sample_rows). A comparison is exact; the Gaussian's exp is computed by ATen over
// the *whole* output, the same shape in every call, as the reference does: each element always takes the same
// code path of the elementwise kernel (vectorized body or scalar tail). The rest is elementwise arithmetic,
// identical for every element. This file is compiled for baseline x86-64 (no per-ISA entry points), which has no FMA:
// `mean + scale * u` rounds the product and the sum separately, as the reference's two torch ops do.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "jacobi/commit.h"

namespace symkernels::jacobi {
namespace {

constexpr const char* kOp = "jacobi_sample_commit";
// Images per tile: within a tile each iterate row is compared and written as one contiguous segment while
// each image's output and noise are read along their own rows (cache lines reused across the tile's rows).
constexpr int64_t kTile = 16;
// Elements per thread task: below this a call stays on one thread (waking another costs more than it saves).
constexpr int64_t kElementsPerTask = 4096;

// Columns [start, stop) of images [0, B): iterate row start + 1 + i holds column start + i (row 0 is s_0).
// `sample(b, d)` gives the new value; returns (the residual (max_moved), first changed row relative to start, or
// stop − start when none changed) in `stats`. A tile's segment of a row is sampled into a buffer first and
// compared as a whole: the rows before the first change (and most segments after it) stand still, and
// only a segment that moved pays for the residual and the write-back.
template <typename T, typename Sample>
void sample_commit(T* hist, int64_t B, int64_t start, int64_t stop, Sample sample, double* stats) {
  const int64_t n = stop - start;
  // Tiles of images are independent: threads take whole tiles, each with its own (residual, first change),
  // merged at the end. The data comes in cold (the network's forward ran in between, on every thread), so a
  // second core halves the cache-miss latency too; a call of few columns (late iterations) stays on one.
  const int64_t tiles = (B + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (kTile * n));
  std::vector<std::pair<double, int64_t>> partial(at::get_num_threads(), {0.0, n});
  at::parallel_for(0, tiles, grain, [&](int64_t tile_begin, int64_t tile_end) {
    auto& [resid, first] = partial[at::get_thread_num()];
    T s[kTile];
    for (int64_t b0 = tile_begin * kTile; b0 < std::min(B, tile_end * kTile); b0 += kTile) {
      const int64_t w = std::min(B - b0, kTile);
      for (int64_t i = 0; i < n; ++i) {
        T* row = hist + (start + 1 + i) * B + b0;
        for (int64_t j = 0; j < w; ++j) s[j] = sample(b0 + j, start + i);
        if (std::memcmp(row, s, sizeof(T) * w) == 0) continue;  // bitwise: −0 vs +0 moved, a NaN equal to itself
        first = std::min(first, i);
        resid = std::max(resid, max_moved(row, s, w));
        std::memcpy(row, s, sizeof(T) * w);
      }
    }
  });
  double resid = 0;
  int64_t first = n;
  for (const auto& [r, f] : partial) {
    resid = std::max(resid, r);
    first = std::min(first, f);
  }
  stats[0] = resid;
  stats[1] = static_cast<double>(first);
}

at::Tensor jacobi_sample_commit_cpu(at::Tensor& hist, const at::Tensor& out, const at::Tensor& noise,
                                    int64_t start, int64_t stop, c10::string_view kind_arg) {
  const std::string_view kind(kind_arg.data(), kind_arg.size());
  TORCH_CHECK_VALUE(kind == "bernoulli" || kind == "gaussian", kOp,
                    ": kind must be 'bernoulli' or 'gaussian', got '", kind, "'");
  check_floating(out, kOp, "out");
  TORCH_CHECK_TYPE(noise.scalar_type() == out.scalar_type() && hist.scalar_type() == out.scalar_type(), kOp,
                   ": noise and hist must have out's dtype ", out.scalar_type(), ", got ", noise.scalar_type(),
                   " and ", hist.scalar_type());
  TORCH_CHECK_VALUE(noise.dim() == 2, kOp, ": noise must be [B, D], got ", noise.sizes());
  const int64_t B = noise.size(0), D = noise.size(1);
  const int64_t width = kind == "gaussian" ? 2 * D : D;
  TORCH_CHECK_VALUE(out.dim() == 2 && out.size(0) == B && out.size(1) == width, kOp, ": out must be [B, ",
                    kind == "gaussian" ? "2D" : "D", "] = [", B, ", ", width, "] for noise ", noise.sizes(),
                    ", got ", out.sizes());
  TORCH_CHECK_VALUE(hist.dim() == 2 && hist.size(0) == D + 1 && hist.size(1) == B && hist.is_contiguous(), kOp,
                    ": hist must be a contiguous [D + 1, B] = [", D + 1, ", ", B, "] iterate, got ", hist.sizes());
  TORCH_CHECK_VALUE(0 <= start && start <= stop && stop <= D, kOp, ": need 0 <= start <= stop <= D = ", D,
                    ", got start ", start, ", stop ", stop);
  at::Tensor stats = at::empty({2}, out.options().dtype(at::kDouble));
  double* st = stats.mutable_data_ptr<double>();
  st[0] = 0;
  st[1] = static_cast<double>(stop - start);
  if (stop == start || B == 0) return stats;
  const at::Tensor u = noise.contiguous();
  const at::Tensor net = out.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), kOp, [&] {
    const scalar_t* un = u.const_data_ptr<scalar_t>();
    const scalar_t* o = net.const_data_ptr<scalar_t>();
    scalar_t* h = hist.mutable_data_ptr<scalar_t>();
    if (kind == "bernoulli") {  // (logit > threshold) as 1 or 0 (0 where the logit is NaN)
      sample_commit(h, B, start, stop, [&](int64_t b, int64_t d) {
        return scalar_t(o[b * D + d] > un[b * D + d] ? 1 : 0);
      }, st);
    } else {  // mean + exp(log sigma) * u, the product rounded to scalar_t before the sum
      // exp over the whole log-sigma half: see the file comment for why not just the columns asked for.
      const at::Tensor scale = at::exp(out.narrow(1, D, D)).contiguous();
      const scalar_t* p = scale.const_data_ptr<scalar_t>();
      const scalar_t* m = o;  // columns [0, D) of each row
      sample_commit(h, B, start, stop, [&](int64_t b, int64_t d) {
        const scalar_t scaled = p[b * D + d] * un[b * D + d];
        return scalar_t(m[b * width + d] + scaled);
      }, st);
    }
  });
  return stats;
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("jacobi_sample_commit", &jacobi_sample_commit_cpu); }

}  // namespace symkernels::jacobi
