"""Gaunt tensor products: exact, e3nn-compatible products of spherical functions (see ops.py)."""
from symkernels.gaunt.coefficients import gaunt_coefficients, gaunt_constant, real_from_complex
from symkernels.gaunt.modules import (GauntTensorProduct, gaunt_convolution, gaunt_power, gaunt_product,
                                      spherical_harmonics)
from symkernels.gaunt.ops import gaunt_tensor_product

__all__ = ["gaunt_coefficients", "gaunt_constant", "real_from_complex", "gaunt_tensor_product",
           "GauntTensorProduct", "gaunt_product", "gaunt_power", "gaunt_convolution", "spherical_harmonics"]
