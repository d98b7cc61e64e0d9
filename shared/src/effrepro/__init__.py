"""effrepro common package: what two or more paper projects share (DESIGN.md §1)."""

__version__ = "0.1.0"
