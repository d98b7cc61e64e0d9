"""Jakiro: speculative decoding with an MoE draft head and contrastive parallel drafting."""

__version__ = "0.1.0"
