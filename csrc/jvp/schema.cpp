// Op schemas of the JVP pillar (see csrc/symkernels.cpp for why schemas live per pillar).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // Fused primal + tangent of y = act(x @ W.T + b), canonical shapes (symkernels/jvp/reference.py):
  // x [M,K], x_t [Tx,M,K], weight [N,K], weight_t [Tw,N,K], bias [N], bias_t [Tb,N], Tx/Tw/Tb in {1,T};
  // returns (y [M,N], y_t [T,M,N]). seed >= 0 generates weight_t from the counter-based RNG instead
  // (weight_t must then be None); distribution is "gaussian" or "rademacher".
  m.def(
      "linear_dual(Tensor x, Tensor? x_t, Tensor weight, Tensor? weight_t, Tensor? bias, Tensor? bias_t, "
      "str activation, int num_tangents, int seed=-1, str distribution=\"gaussian\") -> (Tensor, Tensor)");
  // Fused primal + T tangents of the row-wise ops over the last dim, canonical shapes (reference.row_dual):
  // x [R,N], x_t [Tx,R,N], weight/bias [N], weight_t/bias_t [Tw|Tb,N], each count in {1,T}; returns
  // (y [R,N], y_t [T,R,N]). Three ops, not one row_dual(kind, ...): each schema is exactly its function's
  // signature (softmax has no weight, RMS norm no bias), so invalid combinations cannot be expressed and
  // errors / backend choice name the op the user called. One templated kernel serves all three.
  m.def(
      "layer_norm_dual(Tensor x, Tensor? x_t, Tensor? weight, Tensor? weight_t, Tensor? bias, Tensor? bias_t, "
      "float eps, int num_tangents) -> (Tensor, Tensor)");
  m.def(
      "rms_norm_dual(Tensor x, Tensor? x_t, Tensor? weight, Tensor? weight_t, float eps, int num_tangents) "
      "-> (Tensor, Tensor)");
  m.def("softmax_dual(Tensor x, Tensor? x_t, int num_tangents) -> (Tensor, Tensor)");
  // Primal + T tangents of softmax(q kᵀ·scale [causal]) v, canonical shapes (symkernels/jvp/attention.py):
  // q [BH,Lq,D], k [BH,Lk,D], v [BH,Lk,DV], tangents [Tx,BH,...] (Tx in {1,T}) or None; returns
  // (o [BH,Lq,DV], o_t [T,BH,Lq,DV]). impl is the kernel, "reference" or "triton"; both are Python.
  m.def(
      "attention_dual(Tensor q, Tensor k, Tensor v, Tensor? q_t, Tensor? k_t, Tensor? v_t, int num_tangents, "
      "bool causal, float scale, str impl) -> (Tensor, Tensor)");
  // Primal + T tangents of y = act(conv2d(x, W, b)), canonical shapes (reference.conv2d_dual): x [N,C,H,W],
  // weight [O,C/groups,kh,kw], tangents [Tk, *primal.shape] (Tk in {1,T}); seed as for linear_dual. Its
  // kernel (both devices) is the ATen composition of symkernels/jvp/conv.py.
  m.def(
      "conv2d_dual(Tensor x, Tensor? x_t, Tensor weight, Tensor? weight_t, Tensor? bias, Tensor? bias_t, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, str activation, int num_tangents, "
      "int seed=-1, str distribution=\"gaussian\") -> (Tensor, Tensor)");
}
