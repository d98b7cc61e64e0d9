"""Gumiho: speculative decoding with serial transformer + parallel MLP draft heads."""

__version__ = "0.1.0"
