"""EAGLE-2 baseline head and proposer; issue 6."""
