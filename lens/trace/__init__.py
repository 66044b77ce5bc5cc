"""The object model users hold: Trace, Op, Layer, modules and params views."""

from .api import trace
from .modules import ModuleCall, ModuleRecord
from .op import Layer, Op, OpGroup
from .trace import Trace

__all__ = ["Layer", "ModuleCall", "ModuleRecord", "Op", "OpGroup", "Trace", "trace"]
