"""The object model users hold: Trace, Op, Layer, modules and params views."""

from .api import trace
from .layer import Layer, OpGroup
from .modules import ModuleCall, ModuleRecord
from .op import Op
from .traces import Trace

__all__ = ["Layer", "ModuleCall", "ModuleRecord", "Op", "OpGroup", "Trace", "trace"]
