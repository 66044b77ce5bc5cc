"""The capture engine: a TorchFunctionMode plus module hooks, scoped to one forward pass."""

from .engine import Halt, PayloadOptions, Recorder
from .interceptors import Interceptor, SaveAll, SaveNone, SavePolicy
from .records import ModuleCallRecord, OpRecord, ParamRef, Ref
from .run import bind_inputs, check_model, hooked_module, run_forward

__all__ = [
    "Halt", "Interceptor", "ModuleCallRecord", "OpRecord", "ParamRef", "PayloadOptions",
    "Recorder", "Ref", "SaveAll", "SaveNone", "SavePolicy", "bind_inputs", "check_model",
    "hooked_module", "run_forward",
]
