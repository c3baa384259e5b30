// CPU kernel of quantize_int4: per row, one read of x and one write of n/2 bytes + one scale.
// Rotation (optional), absmax, scale, round and pack all run on an L1/L2-resident fp32 copy of the row.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/simd.h"
#include "hadamard/hadamard_k_row.h"
#include "quarot/quarot.h"

namespace symkernels::quarot {
namespace {

constexpr int64_t kElementsPerTask = 1 << 14;

using RotationPlan = hadamard::KroneckerPlan<float>;

// The loops below are written over vectors of VB bytes (one register of the entry point): GCC keeps a scalar
// select loop scalar (under -ftrapping-math it may not run a float comparison the source skips), and a
// 64-byte accumulator in the AVX2 code lived on the stack, reduced lane by lane through memory. Both were
// most of quantize_int4 without rotation (4.8 ms for 256 x 4096 fp32 on AVX2, 30x a copy).
template <int VB>
using RowVec = simd::RegVec<float, VB>;

// max|row[i]| with a NaN flag (a plain max would drop a NaN that is not first). In vector lanes: max is
// exact, so the lane order does not change the result.
template <int VB>
SYMKERNELS_INLINE float row_absmax(const float* row, int64_t n, bool& nan) {
  using V = typename RowVec<VB>::type;
  using I = typename RowVec<VB>::index;
  constexpr int64_t W = RowVec<VB>::width;
  V m{};
  I bad{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    V a = simd::load<V>(row + i);
    a = a < 0.f ? -a : a;
    bad |= a != a;
    m = a > m ? a : m;
  }
  float amax = 0.f;
  for (int l = 0; l < W; ++l) {
    amax = m[l] > amax ? m[l] : amax;
    nan |= bad[l] != 0;
  }
  for (; i < n; ++i) {
    const float a = std::fabs(row[i]);
    nan |= a != a;
    amax = a > amax ? a : amax;
  }
  return amax;
}

// row[i] = quantize_code(row[i], scale), the same operations lane-wise (see quarot.h).
template <int VB>
SYMKERNELS_INLINE void quantize_codes(float* row, int64_t n, float scale) {
  using V = typename RowVec<VB>::type;
  constexpr int64_t W = RowVec<VB>::width;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V v = simd::load<V>(row + i) / scale;
    V c = v < float(kQMin) ? V{} + float(kQMin) : v;
    c = c > float(kQMax) ? V{} + float(kQMax) : c;
    const V r = (c + 12582912.0f) - 12582912.0f;
    simd::store(row + i, v == v ? r : V{});
  }
  for (; i < n; ++i) row[i] = quantize_code(row[i], scale);
}

// plan == nullptr: no rotation.
template <int RegisterBytes, typename T>
SYMKERNELS_INLINE void quantize_rows_impl(const T* in, uint8_t* packed, float* scales, int64_t rows, int64_t n,
                                          float clip, const RotationPlan* plan, float rot_scale) {
  constexpr int VB = simd::register_vector_bytes(RegisterBytes);
  std::vector<float> row_buf, scratch_buf;
  float* row = hadamard::aligned_scratch(row_buf, n);
  float* scratch = hadamard::aligned_scratch(scratch_buf, plan ? plan->scratch_size() : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = in + r * n;
    if (plan) {
      hadamard::kronecker_hadamard_row<RegisterBytes>(src, row, *plan, rot_scale, scratch);
    } else {
      hadamard::widen_row(src, row, n, 1.0f);  // exact, vectorized for fp16/bf16 too
    }
    bool nan = false;
    const float amax = row_absmax<VB>(row, n, nan);
    const float scale = nan ? NAN : (clip * amax) / 7.0f;
    scales[r] = scale;
    quantize_codes<VB>(row, n, scale);  // as floats, in place; then the nibble packing
    uint8_t* dst = packed + r * (n / 2);
    for (int64_t j = 0; j < n / 2; ++j) {
      dst[j] = pack_pair(static_cast<int8_t>(static_cast<int>(row[2 * j])),
                         static_cast<int8_t>(static_cast<int>(row[2 * j + 1])));
    }
  }
}

#define QUANTIZE_CLONE(NAME, T)                                                                              \
  SYMKERNELS_ISA_ENTRY_POINTS(NAME,                                                                          \
                              (const T* in, uint8_t* packed, float* scales, int64_t rows, int64_t n, float clip, \
                               const RotationPlan* plan, float rot_scale),                                   \
                              (in, packed, scales, rows, n, clip, plan, rot_scale),                          \
                              quantize_rows_impl<kRegisterBytes>(in, packed, scales, rows, n, clip, plan, rot_scale))
QUANTIZE_CLONE(quantize_rows_f32, float)
QUANTIZE_CLONE(quantize_rows_f64, double)
QUANTIZE_CLONE(quantize_rows_f16, c10::Half)
QUANTIZE_CLONE(quantize_rows_bf16, c10::BFloat16)
#undef QUANTIZE_CLONE

template <typename T, typename Fn>
void run(const at::Tensor& x, at::Tensor& packed, at::Tensor& scales, double clip, const at::Tensor* hk,
         double rot_scale, Fn fn) {
  const int64_t n = x.size(-1);
  const int64_t rows = n ? x.numel() / n : 0;
  const T* src = x.const_data_ptr<T>();
  uint8_t* dst = packed.mutable_data_ptr<uint8_t>();
  float* sc = scales.mutable_data_ptr<float>();
  std::shared_ptr<const RotationPlan> plan;
  if (hk) plan = hadamard::cached_kronecker_plan(hk->const_data_ptr<float>(), hk->size(0), n / hk->size(0));
  const RotationPlan* pl = plan.get();
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    fn(src + begin * n, dst + begin * (n / 2), sc + begin, end - begin, n, static_cast<float>(clip), pl,
       static_cast<float>(rot_scale));
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_int4_cpu(const at::Tensor& x, double clip_ratio,
                                                      const std::optional<at::Tensor>& hk, double rot_scale) {
  constexpr const char* op = "quantize_int4";
  check_floating(x, op, "x");
  check_min_dim(x, 1, op, "x");
  const int64_t n = x.size(-1);
  TORCH_CHECK_VALUE(n % 2 == 0, op, ": x.shape[-1] must be even (two 4-bit codes per byte), got ", n);
  TORCH_CHECK_VALUE(std::isfinite(clip_ratio) && clip_ratio > 0.0 && clip_ratio <= 1.0, op,
                    ": clip_ratio must be in (0, 1], got ", clip_ratio);
  at::Tensor h;
  if (hk.has_value()) {
    TORCH_CHECK_VALUE(hk->dim() == 2 && hk->size(0) == hk->size(1) && hk->size(0) >= 1, op,
                      ": hk must be a square K×K matrix, got shape ", hk->sizes());
    const int64_t k = hk->size(0);
    TORCH_CHECK_VALUE(n % k == 0 && is_power_of_two(n / k), op, ": x.shape[-1] must be K·2^m for K = ", k,
                      ", got ", n);
    h = hk->to(at::kFloat).contiguous();
  }
  const at::Tensor input = x.contiguous();
  std::vector<int64_t> packed_shape(x.sizes().begin(), x.sizes().end()), scale_shape = packed_shape;
  packed_shape.back() = n / 2;
  scale_shape.back() = 1;
  at::Tensor packed = at::empty(packed_shape, x.options().dtype(at::kByte));
  at::Tensor scales = at::empty(scale_shape, x.options().dtype(at::kFloat));
  if (input.numel() == 0) {
    scales.zero_();  // rows of length 0: amax = 0 → scale 0, as the reference
    return {packed, scales};
  }
  const at::Tensor* hp = hk.has_value() ? &h : nullptr;
  switch (x.scalar_type()) {
    case at::kFloat: run<float>(input, packed, scales, clip_ratio, hp, rot_scale, quantize_rows_f32); break;
    case at::kDouble: run<double>(input, packed, scales, clip_ratio, hp, rot_scale, quantize_rows_f64); break;
    case at::kHalf: run<c10::Half>(input, packed, scales, clip_ratio, hp, rot_scale, quantize_rows_f16); break;
    case at::kBFloat16: run<c10::BFloat16>(input, packed, scales, clip_ratio, hp, rot_scale, quantize_rows_bf16); break;
    default: TORCH_CHECK_TYPE(false, op, ": unsupported dtype ", x.scalar_type());
  }
  return {packed, scales};
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("quantize_int4", &quantize_int4_cpu); }

}  // namespace symkernels::quarot
