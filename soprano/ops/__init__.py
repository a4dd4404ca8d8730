"""The one door from the runtime to kernels.

``reference``: the plain-torch contract of every op. ``table``: which backend (torch, cpu,
cuda, triton) runs each op, resolved once into an ``OpTable`` when an engine is built.
``native``: the tensor-level wrappers of the compiled ``soprano._C``. ``weights``: the plain
structs fused kernels receive instead of model objects. ``report`` (``python -m soprano.ops``,
``soprano-tts env``): what this machine has and what ``auto`` picks.
"""
from . import reference
from .table import BACKENDS, IMPLS, OPS, OpTable, backend_available, choose, requested_backend

__all__ = ["BACKENDS", "IMPLS", "OPS", "OpTable", "backend_available", "choose", "reference",
           "requested_backend"]
