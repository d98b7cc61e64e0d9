"""DeepKD: decoupled GSNR-based momenta and dynamic top-k mask for knowledge distillation."""

__version__ = "0.1.0"
