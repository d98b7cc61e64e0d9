"""FTP: fine-grained token-wise pruning of LLM blocks via a learnable token router."""

__version__ = "0.1.0"
