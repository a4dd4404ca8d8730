"""When the attention kernels' tl.dot must take fp32 operands in IEEE precision.

fp32 inputs must not be rounded to TF32 (the reference is exact fp32). And the interpreter's
tl.dot returns garbage for bfloat16 operands (triton 3.x), so there bf16 dots run on fp32 too;
compiled on a GPU, 16-bit dots stay on the tensor cores.
"""
import os

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def ieee_dot(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or (INTERPRETED and dtype == torch.bfloat16)
