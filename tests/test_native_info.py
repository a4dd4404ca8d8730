"""soprano._C's introspection (cpu_features, build_info, threads), linear_cpu with fp32 weights,
and the ValueErrors of the native api layer: each names the op and the argument it rejects."""
import re
import threading

import pytest
import torch
import torch.nn.functional as F

from soprano.ops import native
from soprano.ops.quantized import FLOAT_TYPE_IDS

pytestmark = pytest.mark.skipif(not native.has_cpu(), reason="soprano._C not built")
C = native._C

FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
            "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    pytest.skip("no /proc/cpuinfo flags on this machine")


def test_cpu_features_has_every_field_as_bool():
    feats = native.cpu_features()
    assert set(feats) == set(FEATURES)
    assert all(type(v) is bool for v in feats.values())


def test_cpu_features_agree_with_proc_cpuinfo():
    # The fields carry Linux's flag names. Linux lists a flag only when the CPU has it and the
    # kernel enables its state, as the probe's XCR0 check requires; an older kernel may not know
    # the newer names, so for those only a listed flag is a must.
    flags = _cpuinfo_flags()
    feats = native.cpu_features()
    for name in ("avx2", "fma", "f16c", "avx512f"):
        assert feats[name] == (name in flags), name
    for name in FEATURES:
        assert feats[name] or name not in flags, name


def test_build_info_keys_and_types():
    info = native.build_info()
    types = {"compiler": str, "cxx_standard": int, "openmp": bool, "openmp_version": int,
             "cuda": bool, "cuda_version": str, "cuda_archs": str}
    assert set(info) == set(types)
    for key, t in types.items():
        assert type(info[key]) is t, key
    assert re.fullmatch(r"(GCC|Clang) \d+\.\d+.*", info["compiler"])
    assert info["cxx_standard"] >= 201703
    assert info["openmp"] == (info["openmp_version"] > 0)
    assert info["cuda"] == C.has_cuda()
    if info["cuda"]:
        assert re.fullmatch(r"\d+\.\d", info["cuda_version"]) and info["cuda_archs"]
    else:
        assert info["cuda_version"] == "" and info["cuda_archs"] == ""


def test_set_num_threads_round_trips():
    before = native.num_threads()
    assert before >= 1
    try:
        native.set_num_threads(1)
        assert native.num_threads() == 1
        native.set_num_threads(3)
        assert native.num_threads() == (3 if native.build_info()["openmp"] else 1)
    finally:
        native.set_num_threads(before)
    assert native.num_threads() == before


def test_set_num_threads_holds_for_every_thread():
    """One count for the process (OpenMP's own is per calling thread, which left the server's
    step and decoder threads at the default)."""
    before = native.num_threads()
    seen = []

    def other():
        native.set_num_threads(before + 1)
        seen.append(native.num_threads())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    try:
        assert seen == [before + 1] and native.num_threads() == before + 1
    finally:
        native.set_num_threads(before)


@pytest.mark.parametrize("n", [0, -2])
def test_set_num_threads_rejects_less_than_one(n):
    with pytest.raises(ValueError, match=f"^set_num_threads: n must be >= 1, got {n}$"):
        native.set_num_threads(n)


@pytest.mark.parametrize("M", [1, 3, 9, 17])
@pytest.mark.parametrize("N,K", [(7, 5), (33, 129), (97, 1025)])
def test_linear_cpu_fp32_weights_match_torch(M, N, K):
    gen = torch.Generator().manual_seed(M * 7919 + N * 31 + K)
    x = torch.randn(M, K, generator=gen)
    w = torch.randn(N, K, generator=gen) * 0.05
    out = native.linear_cpu(x, w)
    assert out.shape == (M, N) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x, w), atol=1e-5, rtol=1e-5)


# --- the native api layer's checks, called with raw arguments -----------------------------------

def _err(op: str, arg: str, rest: str = "") -> str:
    """A pattern for "op: ...arg...rest" (op anchored at the start of the message)."""
    return f"^{re.escape(op)}: .*{re.escape(arg)}.*{rest}"


def _apply(args: dict, over: dict) -> dict:
    """args with over's values; a "+n" string offsets the pointer it replaces by n bytes."""
    for key, value in over.items():
        shift = isinstance(value, str) and value.startswith("+")
        args[key] = args[key] + int(value) if shift else value
    return args


def _linear_args():
    x, w, y = torch.randn(3, 8), torch.randn(4, 8), torch.empty(3, 4)
    return (x, w, y), dict(x=x.data_ptr(), w=w.data_ptr(), y=y.data_ptr(), M=3, N=4, K=8,
                           x_row_stride=8, y_row_stride=4, wdtype="float32")


@pytest.mark.parametrize("over,arg,rest", [
    ({"x": 0}, "x", "null pointer"),
    ({"w": 0}, "w", "null pointer"),
    ({"y": 0}, "y", "null pointer"),
    ({"x": "+2"}, "x", "not aligned to its 4-byte"),
    ({"w": "+2"}, "w", "not aligned to its 4-byte"),
    ({"y": "+1"}, "y", "not aligned to its 4-byte"),
    ({"M": -1}, "M", ">= 0, got -1"),
    ({"N": 0}, "N", "> 0, got 0"),
    ({"K": 0}, "K", "> 0, got 0"),
    ({"x_row_stride": 7}, "x_row_stride", ">= K"),
    ({"y_row_stride": 3}, "y_row_stride", ">= N"),
    ({"wdtype": "float64"}, "dtype", "float64"),
])
def test_linear_cpu_rejects_bad_raw_arguments(over, arg, rest):
    keep, args = _linear_args()
    with pytest.raises(ValueError, match=_err("linear_cpu", arg, rest)):
        C.linear_cpu(**_apply(args, over))


def test_linear_cpu_checks_16bit_weight_alignment_at_2_bytes():
    x, y = torch.randn(1, 8), torch.empty(1, 4)
    w = torch.randn(4, 9).bfloat16()
    C.linear_cpu(x.data_ptr(), w.data_ptr() + 2, y.data_ptr(), 1, 4, 8, 8, 4, "bfloat16")
    with pytest.raises(ValueError, match=_err("linear_cpu", "w", "2-byte")):
        C.linear_cpu(x.data_ptr(), w.data_ptr() + 1, y.data_ptr(), 1, 4, 8, 8, 4, "bfloat16")


@pytest.mark.parametrize("index,arg", [(0, "x"), (1, "weight"), (2, "out")])
def test_rms_norm_cpu_names_the_bad_pointer(index, arg):
    x, w = torch.randn(2, 8), torch.randn(8)
    ptrs = [x.data_ptr(), w.data_ptr(), x.data_ptr()]
    null, misaligned = list(ptrs), list(ptrs)
    null[index], misaligned[index] = 0, ptrs[index] + 2
    with pytest.raises(ValueError, match=_err("rms_norm_cpu", arg, "null pointer")):
        C.rms_norm_cpu(*null, 2, 8, 8, 8, 1e-6)
    with pytest.raises(ValueError, match=_err("rms_norm_cpu", arg, "not aligned")):
        C.rms_norm_cpu(*misaligned, 2, 8, 8, 8, 1e-6)


@pytest.mark.parametrize("sizes,arg,rest", [
    ((-1, 8, 8, 8, 1e-6), "rows", ">= 0"),
    ((2, 0, 8, 8, 1e-6), "hidden", "> 0"),
    ((2, 8, -1, 8, 1e-6), "x_row_stride", ">= 0"),
    ((2, 8, 8, 4, 1e-6), "out_row_stride", "overlap"),
    ((2, 8, 8, 8, float("nan")), "eps", "finite"),
])
def test_rms_norm_cpu_names_the_bad_size(sizes, arg, rest):
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match=_err("rms_norm_cpu", arg, rest)):
        C.rms_norm_cpu(x.data_ptr(), w.data_ptr(), x.data_ptr(), *sizes)


def test_rms_norm_cpu_allows_null_pointers_for_no_rows():
    C.rms_norm_cpu(0, 0, 0, 0, 8, 8, 8, 1e-6)


def test_rms_norm_cuda_names_the_op():
    x, w = torch.randn(2, 8), torch.randn(8)
    args = (x.data_ptr(), w.data_ptr(), x.data_ptr(), 2, 8, 8, 8, 1e-6)
    if not C.has_cuda():
        with pytest.raises(RuntimeError, match="without CUDA"):
            C.rms_norm_cuda(*args, "float32", 0)
        return
    # validation happens before any CUDA call, so no GPU is needed here
    with pytest.raises(ValueError, match=_err("rms_norm_cuda", "dtype", "'float64'")):
        C.rms_norm_cuda(*args, "float64", 0)
    with pytest.raises(ValueError, match=_err("rms_norm_cuda", "weight", "null pointer")):
        C.rms_norm_cuda(args[0], 0, *args[2:], "float16", 0)


class _Qwen3:
    """Tiny valid Qwen3StepCpu arguments (fp32 everything), kept alive with their tensors."""
    H, NH, KVH, D, I, V, P, SLOTS, L = 8, 2, 1, 4, 6, 5, 6, 2, 6

    def __init__(self, wdtype=torch.float32):
        H, NH, KVH, D, I, V = self.H, self.NH, self.KVH, self.D, self.I, self.V
        self.wdtype = wdtype
        self.t = dict(embed=torch.randn(V, H), final_norm=torch.ones(H),
                      lm_head=torch.randn(V, H).to(wdtype), cos=torch.ones(self.P, D),
                      sin=torch.zeros(self.P, D),
                      k_cache=torch.zeros(1, self.SLOTS, KVH, self.L, D),
                      v_cache=torch.zeros(1, self.SLOTS, KVH, self.L, D))
        self.layer = [torch.ones(H), torch.randn((NH + 2 * KVH) * D, H).to(wdtype),
                      torch.ones(D), torch.ones(D), torch.randn(H, NH * D).to(wdtype),
                      torch.ones(H), torch.randn(2 * I, H).to(wdtype),
                      torch.randn(H, I).to(wdtype)]

    def parts(self):
        """One (type, rows) part per matrix: lm_head, wqkv, wo, w_gate_up, w_down."""
        rows = [self.V, self.layer[1].shape[0], self.layer[4].shape[0], self.layer[6].shape[0],
                self.layer[7].shape[0]]
        return [[(FLOAT_TYPE_IDS[self.wdtype], n)] for n in rows]

    def args(self, **over):
        """The constructor's keyword arguments, with over's replacing them."""
        p = {k: v.data_ptr() for k, v in self.t.items()}
        a = dict(hidden=self.H, heads=self.NH, kv_heads=self.KVH, head_dim=self.D,
                 intermediate=self.I, vocab=self.V, max_positions=self.P, eps=1e-6,
                 parts=self.parts(), embed=p["embed"],
                 final_norm=p["final_norm"],
                 lm_head=p["lm_head"], cos=p["cos"], sin=p["sin"],
                 layers=[[t.data_ptr() for t in self.layer]], k_cache=p["k_cache"],
                 v_cache=p["v_cache"], slots=self.SLOTS, max_len=self.L)
        a.update(over)
        return a


@pytest.mark.parametrize("name", ["hidden", "heads", "kv_heads", "head_dim", "intermediate",
                                  "vocab", "max_positions", "slots", "max_len"])
def test_qwen3_step_cpu_names_the_bad_size(name):
    q = _Qwen3()
    with pytest.raises(ValueError, match=_err("Qwen3StepCpu", name, "> 0, got 0")):
        C.Qwen3StepCpu(**q.args(**{name: 0}))


@pytest.mark.parametrize("over,arg,rest", [
    ({"head_dim": 3}, "head_dim", "even"),
    ({"heads": 3, "kv_heads": 2}, "heads", "multiple of kv_heads"),
    ({"eps": -1.0}, "eps", ">= 0"),
    ({"layers": []}, "layers", "empty"),
    ({"parts": [[(0, 5)]]}, "parts", "the parts of every matrix \\(5\\), got 1"),
    ({"parts": [[(3, 5)]] * 5}, "lm_head", "ggml type 3 is not F32, F16, BF16, Q8_0"),
    ({"parts": [[(8, 5)]] * 5}, "lm_head", "rows of 8 values are not whole Q8_0 blocks"),
    ({"parts": [[]] * 5}, "lm_head", "no parts"),
    ({"parts": [[(0, 4)]] + _Qwen3().parts()[1:]}, "lm_head",
     "parts of 4 rows, the matrix has 5"),
    ({"parts": [[(0, 2), (0, 0)]] + _Qwen3().parts()[1:]}, "lm_head", "a part of 0 rows"),
    ({"embed": 0}, "embed", "null pointer"),
    ({"final_norm": 0}, "final_norm", "null pointer"),
    ({"lm_head": 0}, "lm_head", "null pointer"),
    ({"cos": 0}, "cos", "null pointer"),
    ({"sin": 0}, "sin", "null pointer"),
    ({"k_cache": 0}, "k_cache", "null pointer"),
    ({"v_cache": 0}, "v_cache", "null pointer"),
])
def test_qwen3_step_cpu_rejects_bad_arguments(over, arg, rest):
    q = _Qwen3()
    with pytest.raises(ValueError, match=_err("Qwen3StepCpu", arg, rest)):
        C.Qwen3StepCpu(**q.args(**over))


@pytest.mark.parametrize("index,name", list(enumerate(
    ["attn_norm", "wqkv", "q_norm", "k_norm", "wo", "ffn_norm", "w_gate_up", "w_down"])))
def test_qwen3_step_cpu_names_the_bad_layer_pointer(index, name):
    q = _Qwen3(torch.bfloat16)
    layer = [t.data_ptr() for t in q.layer]
    layer[index] = 0
    with pytest.raises(ValueError, match=_err("Qwen3StepCpu", f"layers[0].{name}",
                                              "null pointer")):
        C.Qwen3StepCpu(**q.args(layers=[layer]))
    # fp32 vectors need 4-byte alignment, bf16 matrices 2-byte
    layer[index] = q.layer[index].data_ptr() + (2 if q.layer[index].dtype == torch.float32 else 1)
    with pytest.raises(ValueError, match=_err("Qwen3StepCpu", f"layers[0].{name}",
                                              "not aligned")):
        C.Qwen3StepCpu(**q.args(layers=[layer]))


def _step_args():
    ints = {k: torch.tensor(v) for k, v in
            dict(tokens=[1, 2], positions=[0, 0], slots=[0, 1]).items()}
    out = dict(hidden=torch.empty(2, _Qwen3.H), logits=torch.empty(2, _Qwen3.V))
    a = {k: t.data_ptr() for k, t in {**ints, **out}.items()}
    a.update(rows=2, first_output_row=0)
    return (ints, out), a


def test_qwen3_step_cpu_runs_on_valid_arguments():
    q = _Qwen3()
    d = C.Qwen3StepCpu(**q.args())
    (_, out), a = _step_args()
    d.step(**a)
    assert torch.isfinite(out["logits"]).all() and out["logits"].abs().sum() > 0


@pytest.mark.parametrize("over,arg,rest", [
    ({"rows": 0}, "rows", "> 0, got 0"),
    ({"first_output_row": 2}, "first_output_row", r"\[0, rows = 2\), got 2"),
    ({"first_output_row": -1}, "first_output_row", "got -1"),
    ({"tokens": 0}, "tokens", "null pointer"),
    ({"positions": 0}, "positions", "null pointer"),
    ({"slots": 0}, "slots", "null pointer"),
    ({"hidden": 0}, "hidden", "null pointer"),
    ({"logits": 0}, "logits", "null pointer"),
    ({"tokens": "+4"}, "tokens", "not aligned to its 8-byte"),
    ({"logits": "+2"}, "logits", "not aligned to its 4-byte"),
])
def test_qwen3_step_cpu_step_rejects_bad_arguments(over, arg, rest):
    q = _Qwen3()
    d = C.Qwen3StepCpu(**q.args())
    keep, a = _step_args()
    with pytest.raises(ValueError, match=_err("Qwen3StepCpu.step", arg, rest)):
        d.step(**_apply(a, over))
