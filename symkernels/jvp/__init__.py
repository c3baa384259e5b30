"""Forward-mode (JVP) kernels: fused primal + tangent ops, seeded tangents, forward-gradient training."""
from symkernels.jvp import functional
from symkernels.jvp.forward_gradient import ForwardGradientAdam, ForwardGradientSGD, forward_gradient
from symkernels.jvp.modules import MLP, Attention, BatchNorm2d, Conv2d, LayerNorm, Linear, RMSNorm
from symkernels.jvp.attention import attention_dual
from symkernels.jvp.batch_norm import batch_norm_dual
from symkernels.jvp.conv import conv2d_dual
from symkernels.jvp.ops import layer_norm_dual, linear_dual, rms_norm_dual, softmax_dual
from symkernels.jvp.pool import avg_pool2d_dual, max_pool2d_dual

__all__ = ["ForwardGradientAdam", "ForwardGradientSGD", "forward_gradient", "Attention", "BatchNorm2d", "Conv2d",
           "LayerNorm", "Linear", "MLP", "RMSNorm", "attention_dual", "avg_pool2d_dual", "batch_norm_dual",
           "conv2d_dual", "functional", "layer_norm_dual", "linear_dual", "max_pool2d_dual", "rms_norm_dual",
           "softmax_dual"]
