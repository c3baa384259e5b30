"""Jacobi-parallel evaluation of sequential computations (RNNs, autoregressive samplers, deep nets)."""
from symkernels.jacobi.ops import rnn
from symkernels.jacobi.reference import rnn_sequential
from symkernels.jacobi.solver import METHODS, JacobiDivergenceError, SolveInfo, sequential, solve

__all__ = ["METHODS", "JacobiDivergenceError", "SolveInfo", "rnn", "rnn_sequential", "sequential", "solve"]
