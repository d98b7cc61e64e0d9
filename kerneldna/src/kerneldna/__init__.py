"""KernelDNA: dynamic kernel sharing via decoupled naive adapters."""

__version__ = "0.1.0"
