"""The attention ops (qk_norm_rope, attention_decode, attention_prefill) on every backend the
table lists, against ``soprano.ops.reference``, over odd shapes: batches of 1 to 64, lengths of
1 to 2048 that are not multiples of any block size, mixed lengths in one batch, slots out of
order, GQA 4:1 and 2:1 and MHA, head dims 128, 64 and 18.

Triton runs in its interpreter without a GPU, on a smaller set of cases (it is slow there); CUDA
cases are marked ``gpu``. Tolerances are per dtype, relative to the reference's magnitude.
"""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before any soprano.kernels module is imported

from soprano.ops import IMPLS, reference  # noqa: E402
from soprano.ops.table import backend_available  # noqa: E402
from op_cases import impl_cases  # noqa: E402

ATTENTION_OPS = ("qk_norm_rope", "attention_decode", "attention_prefill")
TOL = {torch.float32: 3e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
EPS = 1e-6


def _interpreted(impl, device):
    return impl.backend == "triton" and device == "cpu"


def _close(out, ref, dtype, what):
    assert out.shape == ref.shape and out.dtype == ref.dtype, what
    tol = TOL[dtype] * (1 + ref.float().abs().max().item())
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= tol, f"{what}: max abs err {err:.3g} > {tol:.3g}"


def _cache(gen, S, KVH, L, D, device, dtype):
    return [torch.randn(S, KVH, L, D, generator=gen).to(device, dtype) for _ in range(2)]


def _rope(P, D, device):
    angles = torch.arange(P)[:, None] * (1e4 ** (-torch.arange(0, D, 2) / D))[None]
    angles = torch.cat((angles, angles), -1)
    return angles.cos().to(device), angles.sin().to(device)


# (tokens, NH, KVH, D, slots, L): one decode row, a decode batch, a prompt, a wide row stride
QK_CASES = [(1, 4, 1, 128, 3, 64), (7, 8, 2, 18, 5, 33), (42, 4, 1, 128, 2, 1024),
            (64, 4, 4, 64, 80, 40)]


def _qk_case(case, device, dtype, gen, pad):
    N, NH, KVH, D, S, L = case
    width = (NH + 2 * KVH) * D
    qkv = (torch.randn(N, width + pad, generator=gen) * 3 + 0.5).to(device, dtype)[:, :width]
    qw, kw = (torch.randn(D, generator=gen).to(device, dtype) for _ in range(2))
    cos, sin = _rope(L + 3, D, device)
    # distinct (slot, position) pairs in any order
    flat = torch.randperm(S * L, generator=gen)[:N]
    slots, positions = (flat // L).to(device), (flat % L).to(device)
    return qkv, qw, kw, cos, sin, positions, slots, *_cache(gen, S, KVH, L, D, device, dtype)


def _check_qk_norm_rope(fn, device, dtype, interpreted):
    gen = torch.Generator().manual_seed(11)
    cases = QK_CASES[:2] if interpreted else QK_CASES
    for case in cases:
        for pad in (0, 5):
            qkv, qw, kw, cos, sin, pos, slots, kc, vc = _qk_case(case, device, dtype, gen, pad)
            kc_ref, vc_ref = kc.clone(), vc.clone()
            q = fn(qkv, qw, kw, cos, sin, pos, slots, kc, vc, EPS)
            q_ref = reference.qk_norm_rope(qkv, qw, kw, cos, sin, pos, slots, kc_ref, vc_ref,
                                           EPS)
            _close(q, q_ref, dtype, f"q of {case}")
            _close(kc, kc_ref, dtype, f"k cache of {case}")
            assert torch.equal(vc, vc_ref), f"v cache of {case} is not a copy"


# (lengths, NH, KVH, D, slots, L, span): mixed lengths, 1s, block-size neighbours, long rows
DECODE_CASES = [
    ([1], 4, 1, 128, 2, 64, None),
    # one row's keys split across threads in pieces of >= 32 keys (with 2+ threads)
    ([64], 4, 1, 128, 2, 200, None),
    ([70], 4, 1, 128, 2, 200, None),
    ([129], 4, 1, 128, 2, 200, None),
    ([200], 4, 1, 128, 2, 200, None),
    ([5, 1, 129, 64, 65], 4, 1, 128, 7, 200, 129),
    ([37, 300, 2, 255], 8, 2, 18, 6, 333, None),
    ([2048, 1, 1000], 4, 1, 128, 4, 2048, None),
    ([(i * 37) % 1024 + 1 for i in range(64)], 4, 1, 128, 70, 1024, None),
    ([17] * 16, 4, 4, 64, 16, 64, 20),
]


def _check_attention_decode(fn, device, dtype, interpreted):
    gen = torch.Generator().manual_seed(12)
    cases = DECODE_CASES[:3] if interpreted else DECODE_CASES
    for lengths, NH, KVH, D, S, L, span in cases:
        B = len(lengths)
        kc, vc = _cache(gen, S, KVH, L, D, device, dtype)
        q = torch.randn(B, NH, D, generator=gen).to(device, dtype)
        slots = torch.randperm(S, generator=gen)[:B].to(device)
        lens = torch.tensor(lengths, device=device)
        out = fn(q, kc, vc, slots, lens, span)
        ref = reference.attention_decode(q, kc, vc, slots, lens, span)
        _close(out, ref, dtype, f"decode lengths {lengths[:6]} (B={B}, span {span})")


# (prompt lengths, NH, KVH, D, slots, L)
PREFILL_CASES = [
    ([1], 4, 1, 128, 2, 16),
    ([37, 1, 70], 4, 1, 128, 5, 80),
    ([33, 5], 8, 2, 18, 3, 40),
    ([300, 42], 4, 1, 128, 3, 300),
    ([2048], 4, 1, 64, 1, 2048),
]


def _check_attention_prefill(fn, device, dtype, interpreted):
    gen = torch.Generator().manual_seed(13)
    cases = PREFILL_CASES[:3] if interpreted else PREFILL_CASES
    for lengths, NH, KVH, D, S, L in cases:
        kc, vc = _cache(gen, S, KVH, L, D, device, dtype)
        cu = torch.tensor([0] + lengths).cumsum(0).to(device)
        q = torch.randn(int(cu[-1]), NH, D, generator=gen).to(device, dtype)
        slots = torch.randperm(S, generator=gen)[:len(lengths)].to(device)
        for max_seqlen in (None, max(lengths)):
            out = fn(q, kc, vc, cu, slots, max_seqlen)
            ref = reference.attention_prefill(q, kc, vc, cu, slots)
            _close(out, ref, dtype, f"prefill lengths {lengths}")


CHECKS = {"qk_norm_rope": _check_qk_norm_rope, "attention_decode": _check_attention_decode,
          "attention_prefill": _check_attention_prefill}


@pytest.mark.parametrize("op,impl,device,dtype,wdtype", list(impl_cases(ATTENTION_OPS)))
def test_attention_op_matches_the_reference(op, impl, device, dtype, wdtype):
    ok, why = backend_available(impl.backend, device)
    assert ok, f"{impl.backend} is not usable on {device} here: {why}"
    CHECKS[op](impl.fn, device, dtype, _interpreted(impl, device))


def test_every_attention_op_has_all_three_backends():
    for op in ATTENTION_OPS:
        assert {i.backend for i in IMPLS[op]} == {"cpu", "cuda", "triton"}, op


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_decode_never_reads_past_the_span(device):
    """Positions past ``span`` hold NaN: a kernel that reads them (even masked out after the
    dot product) poisons its row."""
    gen = torch.Generator().manual_seed(14)
    kc, vc = _cache(gen, 3, 1, 64, 16, device, torch.float32)
    q = torch.randn(2, 4, 16, generator=gen).to(device)
    slots, lens = torch.tensor([2, 0], device=device), torch.tensor([40, 3], device=device)
    ref = reference.attention_decode(q, kc, vc, slots, lens, 40)
    kc[:, :, 40:] = vc[:, :, 40:] = float("nan")
    backends = [i for i in IMPLS["attention_decode"]
                if device in i.devices and backend_available(i.backend, device)[0]]
    assert {i.backend for i in backends} == ({"cuda", "triton"} if device == "cuda" else
                                             {"cpu"} | ({"triton"} if not CUDA else set()))
    for impl in backends:
        _close(impl.fn(q, kc, vc, slots, lens, 40), ref, torch.float32, impl.backend)


def _backends_here():
    for backend in ("torch", "cpu", "triton"):
        if backend_available(backend, "cpu")[0] and not (backend == "triton" and CUDA):
            yield pytest.param("cpu", backend, id=f"cpu-{backend}")
    for backend in ("torch", "cuda", "triton"):
        yield pytest.param("cuda", backend, id=f"cuda-{backend}", marks=[pytest.mark.gpu])


REAL_TEXT = "Every backend speaks this sentence the same way."


@pytest.fixture(scope="module")
def real_reference(real_ckpt):
    from soprano import SopranoTTS
    tts = SopranoTTS(real_ckpt, device="cpu", backend="torch")
    return tts.generate([REAL_TEXT], max_new_tokens=8)[0][0].generated


@pytest.mark.slow
@pytest.mark.parametrize("device,backend", list(_backends_here()))
def test_real_shape_model_gives_the_torch_backends_greedy_tokens(real_ckpt, real_reference,
                                                                 device, backend):
    """End to end on the real-shape checkpoint (GQA 4:1, head dim 128, 17 layers): prefill
    through attention_prefill, decode through attention_decode (on a GPU, replayed from CUDA
    graphs with lengths in device memory), same greedy tokens as the torch reference in fp32."""
    from soprano import SopranoTTS
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    tts = SopranoTTS(real_ckpt, device=device, dtype="float32", backend=backend)
    got = tts.generate([REAL_TEXT], max_new_tokens=8)[0][0].generated
    assert got.token_ids == real_reference.token_ids
    assert abs(got.hidden - real_reference.hidden).max() <= 1e-3
