"""Athanor: a distilling edge-inference appliance (cache -> student -> teacher)."""

__version__ = "0.1.0"
