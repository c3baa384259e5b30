"""Forward-mode (JVP) kernels: fused primal + tangent ops, seeded tangents, forward-gradient training."""
from symkernels.jvp.ops import linear_dual

__all__ = ["linear_dual"]
