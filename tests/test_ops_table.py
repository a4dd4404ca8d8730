"""The backend table: every implementation it lists against its op's torch reference over odd
shapes, what ``auto`` and forced backends resolve to, and ``soprano-tts env``'s report."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # The Triton interpreter is chosen when a kernel is decorated, so before soprano.kernels
    # is imported (as in test_ops_rms_norm.py): the triton backend then runs on CPU tensors.
    os.environ["TRITON_INTERPRET"] = "1"

from soprano.ops import IMPLS, OPS, OpTable, backend_available, native_gguf, reference  # noqa: E402
from soprano.ops.table import requested_backend  # noqa: E402
from op_cases import impl_cases  # noqa: E402


def _rms_norm_case(device, dtype, shape, gen):
    x = (torch.randn(*shape, generator=gen) * 2 + 0.3).to(device, dtype)
    w = torch.randn(shape[-1], generator=gen).to(device, dtype)
    return (x, w, 1e-6), {}


def _linear_case(device, dtype, wdtype, shape, gen, bias):
    *lead, K, N = shape
    x = torch.randn(*lead, K, generator=gen).to(device, dtype)
    w = (torch.randn(N, K, generator=gen) * 0.1).to(device, wdtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if bias else None
    return (x, w, b), {}


# Odd shapes: nothing a multiple of 8, leading dims of 1 and several.
RMS_SHAPES = [(1, 7), (3, 5, 123), (17, 1025)]
LINEAR_SHAPES = [(1, 33, 7), (2, 3, 97, 13), (9, 130, 51), (17, 5, 3)]
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 4e-2}


# attention ops: test_ops_attention.py; decoder ops: test_ops_vocos.py; qwen3_step:
# test_ops_qwen3_step.py; dequantize: test_ops_dequant.py; greedy_tokens: test_sampling.py
@pytest.mark.parametrize("op,impl,device,dtype,wdtype", list(impl_cases(("rms_norm", "linear"))))
def test_every_implementation_matches_the_reference(op, impl, device, dtype, wdtype):
    ok, why = backend_available(impl.backend, device)
    assert ok, f"{impl.backend} is not usable on {device} here: {why}"
    gen = torch.Generator().manual_seed(1)
    if op == "rms_norm":
        cases = [_rms_norm_case(device, dtype, s, gen) for s in RMS_SHAPES]
    else:
        cases = [_linear_case(device, dtype, wdtype, s, gen, bias) for s in LINEAR_SHAPES
                 for bias in (False, True)]
    for args, kwargs in cases:
        out = impl.fn(*args, **kwargs)
        ref = OPS[op].reference(*args, **kwargs)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        tol = TOLERANCE[dtype] * (1 + ref.float().abs().max().item())
        err = (out.float() - ref.float()).abs().max().item()
        assert err <= tol, f"{op} on {impl.backend}: max abs err {err} > {tol}"


def test_auto_on_cpu_takes_the_native_kernels_and_torch_for_the_rest():
    table = OpTable("cpu", torch.float32)
    picks = table.describe()
    assert picks["rms_norm"] == "cpu"
    assert picks["linear[w=bfloat16]"] == "cpu" and picks["linear[w=float32]"] == "torch"
    assert picks["qwen3_step[w=bfloat16]"] == "cpu"
    for op in ("qk_norm_rope", "attention_decode", "attention_prefill", "embed_norm",
               "convnext_block", "istft_frames", "istft", "dequantize"):
        assert picks[op] == "cpu", op
    assert table.rms_norm is IMPLS["rms_norm"][0].fn
    assert table.linear(torch.ones(1, 2), torch.ones(3, 2)).tolist() == [[2.0] * 3]  # torch


@pytest.mark.gpu
def test_auto_on_cuda_takes_the_measured_fastest_backend_per_op():
    picks = OpTable("cuda", torch.bfloat16).describe()
    assert all(picks[op] == "triton" for op in ("rms_norm", "qk_norm_rope", "attention_decode"))
    assert picks["attention_prefill"] == "cuda"
    # not yet measured on a GPU: torch's until bench/decoder.py says otherwise
    assert all(picks[op] == "torch" for op in ("embed_norm", "convnext_block", "istft_frames",
                                               "istft", "dequantize"))


def test_auto_never_picks_the_triton_interpreter_on_cpu():
    if CUDA:  # this module leaves the interpreter off where a GPU runs triton compiled
        assert backend_available("triton", "cpu") == (False, "on cpu only under TRITON_INTERPRET=1")
    else:
        assert backend_available("triton", "cpu")[0]  # usable when forced...
    assert OpTable("cpu", torch.float32).describe()["rms_norm"] != "triton"  # ...not by auto


def test_forced_backend_falls_back_per_op_with_one_log_line(caplog):
    device = "cuda" if CUDA else "cpu"  # where triton runs here
    with caplog.at_level(logging.INFO, logger="soprano.ops"):
        table = OpTable(device, torch.float32, "triton")
    picks = table.describe()
    assert picks["istft"] == "triton" and picks["linear[w=float32]"] == "torch"
    lines = [r.getMessage() for r in caplog.records]
    assert f"backend triton has no linear for {device} float32: using the torch reference" in lines
    assert len([m for m in lines if " linear " in m]) == 1
    assert not any("istft" in m for m in lines)


def test_forced_cuda_on_a_cpu_runs_every_op_on_the_reference(caplog):
    with caplog.at_level(logging.INFO, logger="soprano.ops"):
        table = OpTable("cpu", torch.float32, "cuda")
    assert set(table.describe().values()) == {"torch"}
    assert len(caplog.records) == len(OPS)


def test_backend_names_environment_and_upstream_values(monkeypatch):
    monkeypatch.delenv("SOPRANO_BACKEND", raising=False)
    assert requested_backend("auto") == "auto"
    for upstream in ("lmdeploy", "transformers", None):
        assert requested_backend(upstream) == "auto"
    monkeypatch.setenv("SOPRANO_BACKEND", "torch")
    assert requested_backend("transformers") == "torch"  # upstream's value means auto
    assert requested_backend("cpu") == "cpu"  # an explicit backend beats the environment
    monkeypatch.setenv("SOPRANO_BACKEND", "tpu")
    with pytest.raises(ValueError, match="SOPRANO_BACKEND must be auto, torch, cpu, cuda, "
                                         "triton .*got 'tpu'"):
        requested_backend("auto")
    with pytest.raises(ValueError, match="backend must be .*got 'vulkan'"):
        requested_backend("vulkan")


def test_weights_stay_16_bit_only_where_a_kernel_reads_them():
    assert OpTable("cpu", torch.float32).native_weight_dtype(torch.bfloat16)
    assert not OpTable("cpu", torch.float32, "torch").native_weight_dtype(torch.bfloat16)
    assert OpTable("cpu", torch.float32, "torch").native_weight_dtype(torch.float32)


def test_model_on_every_cpu_backend_matches_the_reference(tiny_ckpt, tiny_tts):
    """The whole model under each forced backend: torch (eager op by op), cpu (fused step),
    triton (its RMSNorm in the interpreter, the rest on the reference): same tokens, hidden
    states to float rounding."""
    from soprano import SopranoTTS
    text = "One sentence for every backend to speak."
    ref = SopranoTTS(tiny_ckpt, device="cpu", backend="torch")
    assert ref.engine.runner.name == "eager"
    want = ref.generate([text], max_new_tokens=6)[0][0].generated
    for backend, runner in (("cpu", "fused-cpu"), ("triton", "eager")):
        tts = SopranoTTS(tiny_ckpt, device="cpu", backend=backend)
        assert tts.engine.runner.name == runner
        got = tts.generate([text], max_new_tokens=6)[0][0].generated
        assert got.token_ids == want.token_ids
        assert abs(got.hidden - want.hidden).max() <= 1e-4
    assert tiny_tts.engine.runner.name == "fused-cpu"


def test_env_report_text_and_json(tmp_path):
    # from tmp_path: ``python -m`` puts the working directory first on sys.path, and the source
    # tree's soprano (no compiled _C when installed without -e) must not shadow the installed one
    text = subprocess.run(["soprano-tts", "env"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    for needle in ("Versions", "torch:", "triton:", "extension_compiler:", "CPU features:",
                   "Backends", "Ops (what each backend implements)", "auto on cpu f32",
                   "GGUF weights: reads F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K",
                   "kept quantized on a CPU: Q8_0 Q4_0 Q4_K Q5_K Q6_K",
                   "quantized weights are multiplied in their blocks on a CPU"):
        assert needle in out
    assert "avx2" in out.split("CPU features:")[1].splitlines()[0]  # this machine has it
    row = next(line for line in out.splitlines() if line.strip().startswith("rms_norm "))
    assert "cpu f32" in row and "reference" in row
    info = json.loads(subprocess.run([sys.executable, "-m", "soprano.ops", "--json"],
                                     capture_output=True, text=True, timeout=120,
                                     cwd=tmp_path).stdout)
    assert set(info) == {"versions", "env", "devices", "cpu_features", "backends", "ops", "auto",
                         "gguf"}
    assert info["gguf"]["reads"][:3] == ["F32", "F16", "BF16"]
    assert info["gguf"]["int8_tiles"] is native_gguf.has_int8_tiles()
    assert ("tile unit (AMX-INT8)" in info["gguf"]["quantized_weights"]) is info["gguf"][
        "int8_tiles"]
    assert info["auto"]["cpu f32"]["rms_norm"] == "cpu"
    assert info["cpu_features"]["avx2"] is True and info["backends"]["torch"]["cpu"] is True
    assert info["devices"][0]["device"] == "cpu"


def test_attention_decode_reference_reads_each_rows_own_slot_and_length():
    """The new decode attention reference against plain per-row softmax attention over the
    row's slot, with and without a span bound, for GQA 4:1 and rows in any slot order."""
    g = torch.Generator().manual_seed(3)
    S, KVH, L, D, NH = 5, 2, 23, 16, 8
    k_cache = torch.randn(S, KVH, L, D, generator=g)
    v_cache = torch.randn(S, KVH, L, D, generator=g)
    q = torch.randn(3, NH, D, generator=g)
    slots, lengths = torch.tensor([4, 0, 2]), torch.tensor([7, 1, 23])
    for span in (None, 23):
        out = reference.attention_decode(q, k_cache, v_cache, slots, lengths, span)
        for b in range(3):
            for h in range(NH):
                keys = k_cache[slots[b], h // (NH // KVH), :lengths[b]]
                values = v_cache[slots[b], h // (NH // KVH), :lengths[b]]
                p = (keys @ q[b, h] / D ** 0.5).softmax(-1)
                torch.testing.assert_close(out[b, h], p @ values, atol=1e-5, rtol=1e-5)
