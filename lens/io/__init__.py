"""Portable files, never pickle: traces (``save``/``load``: JSON + safetensors) and
activation datasets (``extract_dataset``/``load_dataset_activations``: sharded
safetensors + a JSON manifest)."""

from .dataset import extract_dataset, load_dataset_activations
from .loading import NotReplayable, load, replayable
from .saving import save
from .streaming import to_disk

__all__ = ["NotReplayable", "extract_dataset", "load", "load_dataset_activations",
           "replayable", "save", "to_disk"]
