"""Benchmarks: ``python -m symkernels.bench``; the harness is ``symkernels.bench.harness``."""
