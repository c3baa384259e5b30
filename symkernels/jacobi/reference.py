"""Pure-PyTorch truth for the Jacobi pillar's RNN op: the cells, the textbook sequential loop, and the
reference Jacobi solve (through the general solver).

Conventions (those of ``torch.nn.RNN``/``GRU`` with ``batch_first=False``):
x ``[T, B, I]``, h0 ``[B, H]``, w_ih ``[G, I]``, w_hh ``[G, H]`` with G = H (Elman) or 3H (GRU, gates
r, z, n). Bias ``b``: ``[H]`` for Elman (b_ih + b_hh, they only ever appear summed), ``[2, 3H]`` for the
GRU (rows b_ih, b_hh: b_hn sits inside the reset gate's product, so the two cannot be merged).
"""
from __future__ import annotations

import torch

from symkernels.jacobi.solver import SolveInfo, solve


def gates(cell: str) -> int:
    return 3 if cell == "gru" else 1


def split_bias(b: torch.Tensor, cell: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(b_ih, b_hh): the bias added to the input projection u, and the one inside the recurrence."""
    if cell == "gru":
        return b[0], b[1]
    return b, torch.zeros_like(b)


def input_projection(x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor) -> torch.Tensor:
    """u_t = W_ih x_t + b_ih for all t at once: the part of the RNN that was always parallel."""
    return torch.matmul(x, w_ih.t()) + b_ih


def cell_step(h_prev: torch.Tensor, u: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, cell: str,
              nonlinearity: str) -> torch.Tensor:
    """New state from the previous one and the input projection, for any leading shape."""
    gh = torch.matmul(h_prev, w_hh.t()) + b_hh
    if cell == "gru":
        H = h_prev.shape[-1]
        r = torch.sigmoid(u[..., :H] + gh[..., :H])
        z = torch.sigmoid(u[..., H:2 * H] + gh[..., H:2 * H])
        n = torch.tanh(u[..., 2 * H:] + r * gh[..., 2 * H:])
        return (1 - z) * n + z * h_prev
    a = u + gh
    return torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)


def rnn_sequential(x: torch.Tensor, h0: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b: torch.Tensor,
                   nonlinearity: str = "tanh", cell: str = "elman") -> torch.Tensor:
    """The textbook loop, differentiable by autograd: the truth every backend is tested against."""
    b_ih, b_hh = split_bias(b, cell)
    u = input_projection(x, w_ih, b_ih)
    h, out = h0, []
    for t in range(x.shape[0]):
        h = cell_step(h, u[t], w_hh, b_hh, cell, nonlinearity)
        out.append(h)
    if not out:
        return x.new_empty((0,) + tuple(h0.shape))
    return torch.stack(out)


def rnn_jacobi(u: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, cell: str,
               nonlinearity: str, *, method: str = "jacobi", tol: float = 0.0,
               max_iters: int | None = None) -> tuple[torch.Tensor, SolveInfo]:
    """Jacobi solve of the recurrence through the general solver (a GEMM per iteration: not batch-invariant,
    so equal to the sequential loop within rounding, not bitwise; the C++ kernel is the bitwise one)."""

    def step(hist, t):
        return cell_step(hist[t - 1], u[t - 1], w_hh, b_hh, cell, nonlinearity)

    with torch.no_grad():
        return solve(step, h0, u.shape[0], method=method, tol=tol, max_iters=max_iters)
