"""The (op, implementation, device, dtype, weight dtype) cases the op tests run: every
implementation the backend table lists, on each device and dtype it accepts, the CUDA ones marked
``gpu``. With a GPU, Triton is tested there, compiled, rather than in the CPU interpreter."""
import pytest
import torch

from soprano.ops import IMPLS


def impl_cases(ops):
    cuda = torch.cuda.is_available()
    for op in ops:
        for impl in IMPLS.get(op, []):
            for device in impl.devices:
                if impl.backend == "triton" and device == "cpu" and cuda:
                    continue
                for dtype in impl.dtypes:
                    for wdtype in impl.weight_dtypes or (None,):
                        yield pytest.param(op, impl, device, dtype, wdtype,
                                           id=f"{op}-{impl.backend}-{device}-{str(dtype)[6:]}"
                                              + (f"-w{str(wdtype)[6:]}" if wdtype else ""),
                                           marks=[pytest.mark.gpu] if device == "cuda" else [])
