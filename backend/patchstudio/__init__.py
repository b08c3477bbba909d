"""Patch Studio: causal interventions on transformer language models."""

__version__ = "0.1.0"
