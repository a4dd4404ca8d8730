"""Triton kernels, installed as ``soprano.kernels``.

They live in a top-level ``kernels/`` directory to sit beside ``csrc/`` (the C++/CUDA kernels),
but ship inside the ``soprano`` package. Nothing is imported here: triton is an optional
dependency, so importing ``soprano.kernels`` must not require it.
"""
