// Op schemas of the Gaunt pillar (see csrc/symkernels.cpp for why schemas live per pillar).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // out[..., k] = sum_n coeffs[n] * x1[..., paths[n,0]] * x2[..., paths[n,1]] over entries with paths[n,2] == k,
  // k < (lmax_out+1)^2, leading dims of x1 and x2 broadcast. With (paths, coeffs) the nonzeros of the real
  // Gaunt tensor (symkernels.gaunt.coefficients.sparse_gaunt_table) this is the Gaunt tensor product; the
  // table is an argument so that backward can pass the same entries with permuted columns (G is symmetric).
  m.def("gaunt_tensor_product(Tensor x1, Tensor x2, Tensor paths, Tensor coeffs, int lmax_out) -> Tensor");
}

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // The same product by the exact sphere-grid route (CPU): theta [P, N] holds the real-SH Legendre factors
  // Theta_l|m| at the P nonnegative Gauss-Legendre nodes of the grid for degree L1+L2+lmax_out (index
  // l^2+l+m), weights [P] the quadrature weights with constants folded in
  // (symkernels.gaunt.coefficients.grid_pair_tables). Backward is the same op with the roles of x1, x2 and
  // the output permuted: the table depends only on L1+L2+lmax_out, which permuting leaves unchanged.
  m.def("gaunt_tensor_product_grid(Tensor x1, Tensor x2, Tensor theta, Tensor weights, int lmax_out) -> Tensor");
}
