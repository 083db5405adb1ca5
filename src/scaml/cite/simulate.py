"""Simulated CITE-seq data: :func:`scaml.datasets.simulate_cite`, here beside the rest of :mod:`scaml.cite`."""

from __future__ import annotations

from ..datasets import simulate_cite

__all__ = ["simulate_cite"]
