"""Every Triton kernel compiles for the GPUs we ship for (sm_80, sm_90), in every dtype, on a
machine without a GPU: triton's compiler and its bundled ptxas need no device. The interpreter
tests check what the kernels compute; this catches what only the compiler rejects (a tl.dot
shape, a layout, shared memory over the limit) before a scarce GPU run does.

The compile runs in a child process without TRITON_INTERPRET (which other test files set when
there is no GPU, and which swaps out the language the compiler needs).
"""
import os
import subprocess
import sys

import pytest

# The shared memory an sm_80 block may use (sm_90: 227 KB)
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def _kernels(dt: str):
    """(kernel, signature, constexprs, num_warps[, other options]) at Soprano's shapes (D=128,
    GQA 4:1; the decoder's fp32 rows with ``dt`` weights; dequantize to ``dt`` for every type)."""
    from gguf import GGMLQuantizationType

    from soprano.kernels import attention_decode as ad
    from soprano.kernels import attention_prefill as ap
    from soprano.kernels import gguf_dequant as gd
    from soprano.kernels import istft
    from soprano.kernels import vocos_blocks as vb
    from soprano.kernels import qk_norm_rope as qk
    from soprano.kernels import rms_norm as rn
    from soprano.ops.reference import DEQUANT_TYPES
    ieee = dt == "fp32"
    i32 = "i32"
    yield rn._rms_norm_kernel, dict(
        x_ptr=f"*{dt}", w_ptr=f"*{dt}", out_ptr=f"*{dt}", x_row_stride=i32, out_row_stride=i32,
        hidden=i32, eps="fp32", BLOCK="constexpr"), dict(BLOCK=512), 2
    yield qk._qk_norm_rope_kernel, dict(
        qkv_ptr=f"*{dt}", qw_ptr=f"*{dt}", kw_ptr=f"*{dt}", cos_ptr="*fp32", sin_ptr="*fp32",
        pos_ptr="*i64", slot_ptr="*i64", q_ptr=f"*{dt}", kc_ptr=f"*{dt}", vc_ptr=f"*{dt}",
        qkv_row_stride=i32, NH=i32, KVH=i32, S=i32, L=i32, P=i32, eps="fp32", D="constexpr",
        HALF_BLOCK="constexpr"), dict(D=128, HALF_BLOCK=64), 1
    yield ad._decode_split_kernel, dict(
        q_ptr=f"*{dt}", kc_ptr=f"*{dt}", vc_ptr=f"*{dt}", slot_ptr="*i64", len_ptr="*i64",
        part_ptr="*fp32", NH=i32, KVH=i32, S=i32, L=i32, span=i32, n_splits=i32, scale="fp32",
        G="constexpr", D="constexpr", BLOCK_G="constexpr", BLOCK_D="constexpr",
        BLOCK_N="constexpr", SPLIT="constexpr", IEEE="constexpr"), dict(
        G=4, D=128, BLOCK_G=ad.BLOCK_G_MIN, BLOCK_D=128, BLOCK_N=ad.BLOCK_N, SPLIT=ad.SPLIT,
        IEEE=ieee), 4
    yield ad._decode_merge_kernel, dict(
        part_ptr="*fp32", len_ptr="*i64", out_ptr=f"*{dt}", NH=i32, span=i32, n_splits=i32,
        D="constexpr", BLOCK_D="constexpr", BLOCK_S="constexpr", SPLIT="constexpr"), dict(
        D=128, BLOCK_D=128, BLOCK_S=8, SPLIT=ad.SPLIT), 4
    yield ap._prefill_kernel, dict(
        q_ptr=f"*{dt}", kc_ptr=f"*{dt}", vc_ptr=f"*{dt}", cu_ptr="*i64", slot_ptr="*i64",
        out_ptr=f"*{dt}", NH=i32, KVH=i32, S=i32, L=i32, scale="fp32", G="constexpr",
        D="constexpr", BLOCK_D="constexpr", BLOCK_M="constexpr", BLOCK_N="constexpr",
        IEEE="constexpr"), dict(G=4, D=128, BLOCK_D=128, BLOCK_M=ap.BLOCK_M,
                                BLOCK_N=ap.BLOCK_N, IEEE=ieee), 4
    yield vb._norm_rows_kernel, dict(
        x_ptr="*fp32", src_ptr="*i64", w_ptr="*fp32", b_ptr="*fp32", nw_ptr="*fp32",
        nb_ptr="*fp32", out_ptr="*fp32", D=i32, eps="fp32", TAPS="constexpr",
        BLOCK_D="constexpr"), dict(TAPS=3, BLOCK_D=1024), 4
    linear = dict(a_ptr="*fp32", src_ptr="*i64", w_ptr=f"*{dt}", bias_ptr="*fp32",
                  gamma_ptr="*fp32", res_ptr="*fp32", out_ptr="*fp32", M=i32, N=i32, K=i32,
                  A_TAPS="constexpr", RES_SHIFT="constexpr", EPILOGUE="constexpr",
                  BLOCK_M="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr")
    blocks = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32)
    for taps, shift, epilogue in ((0, 0, 1), (0, 1, 2), (3, 0, 0)):  # GELU, residual, embed
        yield vb._linear_kernel, linear, dict(A_TAPS=taps, RES_SHIFT=shift, EPILOGUE=epilogue,
                                              **blocks), 4
    yield istft._frames_kernel, dict(
        spec_ptr="*fp32", basis_ptr="*fp32", window_ptr="*fp32", out_ptr="*fp32",
        M=i32, spec_row_stride=i32, BINS=i32, NFFT=i32, max_magnitude="fp32",
        BLOCK_M="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr"), blocks, 4
    yield istft._overlap_add_kernel, dict(
        frames_ptr="*fp32", window_ptr="*fp32", out_ptr="*fp32", F=i32, NFFT=i32, HOP=i32,
        LENGTH=i32, OVERLAP="constexpr", BLOCK="constexpr"), dict(OVERLAP=4, BLOCK=256), 4
    options = dict(gd.OPTIONS)
    warps = options.pop("num_warps")
    for name in DEQUANT_TYPES:
        yield gd._dequant_kernel, dict(raw_ptr="*u8", out_ptr=f"*{dt}", n="i64",
                                       QTYPE="constexpr", BLOCK="constexpr"), dict(
            QTYPE=int(GGMLQuantizationType[name]), BLOCK=gd.BLOCK), warps, options


def compile_all(arch: int, dt: str) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    for kernel, signature, constexprs, warps, *options in _kernels(dt):
        options = {"num_warps": warps, **(options[0] if options else {})}
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature,
                                            constexprs=constexprs),
                                  target=GPUTarget("cuda", arch, 32), options=options)
        name = kernel.fn.__name__
        assert compiled.asm["cubin"], f"{name}: no cubin for sm_{arch}"
        if options.get("enable_fp_fusion") is False:  # bit-exact kernels: no fused multiply-add
            assert "fma.rn" not in compiled.asm["ptx"], f"{name} ({constexprs}): an FMA"
        assert compiled.metadata.shared <= SMEM_LIMIT[arch], \
            f"{name} ({dt}) needs {compiled.metadata.shared} B of shared memory on sm_{arch}"
        print(f"{name} {dt} sm_{arch}: {compiled.metadata.shared} B shared")


@pytest.mark.parametrize("dt", ("fp32", "fp16", "bf16"))
def test_triton_kernels_compile_for_the_gpus_we_ship_for(dt):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    for arch in (80, 90):
        run = subprocess.run([sys.executable, __file__, str(arch), dt], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.count(f"{dt} sm_{arch}") == 21, run.stdout


if __name__ == "__main__":
    compile_all(int(sys.argv[1]), sys.argv[2])
