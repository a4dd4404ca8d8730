"""Qwen3's rotary tables, without torch: both engines (torch's and ``soprano.lean``) take them
from here, so that their steps give the same bits.

The angles are Hugging Face's, in fp32: theta ** (2i / D) rounded to fp32, its fp32 reciprocal,
times the position (torch's fp32 ``pow`` rounds correctly for Soprano's theta and head size, so
these are its bits). Each cos and sin is then the float64 one of that angle, rounded once:
torch's fp32 ``cos`` differs from it in the last bit of ~5% of the entries, numpy's in others,
and a table made by either would tie an engine to its library.
"""
import numpy as np

from .config import BackboneConfig


def rope_tables(cfg: BackboneConfig, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [rows, D] fp32 in the half-split layout (each angle for both halves)."""
    exponent = np.arange(0, cfg.head_dim, 2).astype(np.float32) / np.float32(cfg.head_dim)
    power = np.power(np.float64(np.float32(cfg.rope_theta)), exponent.astype(np.float64))
    inv_freq = np.float32(1.0) / power.astype(np.float32)
    angles = np.arange(rows).astype(np.float32)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
