"""Comparing several traces of one model: bundles, metrics and plots."""

from ..errors import GraphMismatchError
from .core import Bundle, bundle
from .metrics import METRICS, cosine, l2, relative_l2

__all__ = ["METRICS", "Bundle", "GraphMismatchError", "bundle", "cosine", "l2", "relative_l2"]
