"""Causal sweeps: patching, ablation and attribution patching over grids of sites.

Use as ``tl.sweep.patching(...)``. Executors: local (default) or ``tl.RayExecutor(...)``.
"""

from ..errors import FolderBusyError, SpecMismatchError
from .api import ablation, patching, run_sweep
from .attribution import attribution_patching
from .executors import Executor, Job, LocalExecutor
from .ray_executor import RayExecutor
from .result import SweepResult
from .runner import Cell, SweepRunner
from .spec import SweepSpec
from .store import ResultStore

__all__ = [
    "Cell", "Executor", "FolderBusyError", "Job", "LocalExecutor", "RayExecutor", "ResultStore",
    "SpecMismatchError", "SweepResult", "SweepRunner", "SweepSpec", "ablation",
    "attribution_patching", "patching", "run_sweep",
]
