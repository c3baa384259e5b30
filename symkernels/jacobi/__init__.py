"""Jacobi-parallel evaluation of sequential computations (RNNs, autoregressive samplers, deep nets)."""
from symkernels.jacobi.solver import METHODS, JacobiDivergenceError, SolveInfo, sequential, solve

__all__ = ["METHODS", "JacobiDivergenceError", "SolveInfo", "sequential", "solve"]
