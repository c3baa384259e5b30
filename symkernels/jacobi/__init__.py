"""Jacobi-parallel evaluation of sequential computations (RNNs, autoregressive samplers, deep nets)."""
from symkernels.jacobi.modules import MADE, PixelCNN, densenet_eval, made_sample, pixelcnn_sample
from symkernels.jacobi.ops import rnn
from symkernels.jacobi.recurrent import GRU, LSTM, RNN, JacobiRNNBase
from symkernels.jacobi.reference import rnn_sequential
from symkernels.jacobi.solver import METHODS, JacobiDivergenceError, SolveInfo, sequential, solve

__all__ = ["GRU", "LSTM", "METHODS", "MADE", "RNN", "JacobiDivergenceError", "JacobiRNNBase", "PixelCNN",
           "SolveInfo", "densenet_eval", "made_sample", "pixelcnn_sample", "rnn", "rnn_sequential", "sequential",
           "solve"]
