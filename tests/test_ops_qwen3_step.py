"""The cpu backend's fused Qwen3 step (OpTable.fused_step, csrc/cpu) against the op-by-op step
(Qwen3Backbone.step / prefill, the torch reference), over shapes x weight dtypes x batch layouts."""
import pytest
import torch

from soprano.model.config import BackboneConfig
from soprano.model.qwen3 import Qwen3Backbone, rope_tables
from soprano.ops import OpTable, native, native_gguf
from soprano.ops.weights import Qwen3LayerWeights, Qwen3Weights
from soprano.runtime.kv_cache import KVCache
from soprano.runtime.runners import FusedCpuRunner
from soprano.ops.quantized import RowStack, cat_rows
from test_ops_quant_linear import quantized

pytestmark = pytest.mark.skipif(not native.has_cpu(), reason="soprano._C not built")

# (hidden, heads, kv_heads, head_dim, intermediate, vocab, layers): Soprano's own layer shapes,
# and awkward ones (no multiple of 8 anywhere, grouped and ungrouped heads).
SHAPES = {"soprano": (512, 4, 1, 128, 2304, 300, 2),
          "awkward": (100, 3, 3, 34, 203, 97, 3),
          "grouped": (96, 6, 2, 16, 130, 64, 2)}


def make_backbone(shape, wdtype, seed=0, gate_scale=1.0, max_positions=64):
    H, NH, KVH, D, I, V, n_layers = shape
    cfg = BackboneConfig(vocab_size=V, hidden_size=H, num_layers=n_layers, num_heads=NH,
                         num_kv_heads=KVH, head_dim=D, intermediate_size=I, rms_norm_eps=1e-6,
                         rope_theta=10000.0, max_positions=max_positions, eos_token_id=3)
    gen = torch.Generator().manual_seed(seed)

    def normal(*size, std=0.05):
        return torch.randn(*size, generator=gen) * std

    def norm(n):
        return 1.0 + normal(n, std=0.1)

    layers = []
    for _ in range(n_layers):
        gate_up = normal(2 * I, H)
        gate_up[:I] *= gate_scale
        layers.append(Qwen3LayerWeights(
            attn_norm=norm(H), wqkv=normal((NH + 2 * KVH) * D, H).to(wdtype), q_norm=norm(D),
            k_norm=norm(D), wo=normal(H, NH * D).to(wdtype), ffn_norm=norm(H),
            w_gate_up=gate_up.to(wdtype), w_down=normal(H, I).to(wdtype)))
    cos, sin = rope_tables(cfg, cfg.max_positions, "cpu")
    weights = Qwen3Weights(hidden=H, heads=NH, kv_heads=KVH, head_dim=D, intermediate=I, vocab=V,
                           eps=cfg.rms_norm_eps, embed=normal(V, H, std=1.0), final_norm=norm(H),
                           lm_head=normal(V, H, std=1.0).to(wdtype), cos=cos, sin=sin,
                           layers=layers)
    return Qwen3Backbone(cfg, weights, OpTable("cpu", torch.float32))


def new_cache(bb, slots):
    return KVCache(bb.cfg, slots, torch.float32, "cpu")


def fused_step(bb, cache):
    step = bb.ops.fused_step(bb.weights, cache.k, cache.v)
    assert step is not None, "the cpu backend has no fused step here"
    return step


def fused_prefill(bb, ids, cache, slot):
    return FusedCpuRunner(fused_step(bb, cache), cache).prefill(ids, slot)


def prefilled_caches(bb, lengths, n=2):
    """``n`` identical caches with slot b prefilled with ``lengths[b]`` random tokens."""
    gen = torch.Generator().manual_seed(7)
    caches = [new_cache(bb, len(lengths)) for _ in range(n)]
    for b, length in enumerate(lengths):
        ids = torch.randint(0, bb.cfg.vocab_size, (length,), generator=gen)
        for c in caches:
            bb.prefill(ids, c, slot=b)
    return caches


def assert_close(out, ref, what):
    err = (out - ref).abs().max().item()
    assert err <= 2e-5 * (1 + ref.abs().max().item()), f"{what}: max abs err {err}"


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("lengths", [[5], [1, 9, 30]])
def test_fused_step_matches_op_by_op(shape, wdtype, lengths):
    bb = make_backbone(SHAPES[shape], wdtype)
    fused_cache, ops_cache = prefilled_caches(bb, lengths)
    fused = fused_step(bb, fused_cache)
    positions = torch.tensor(lengths)
    tokens = torch.tensor([11, 40, 2][:len(lengths)])
    # rows in reverse slot order: slots need not be 0..B-1
    slots = torch.arange(len(lengths)).flip(0)
    positions, tokens = positions.flip(0), tokens.flip(0)
    for step in range(3):
        hidden, logits = fused(tokens, positions, slots)
        ref_hidden, ref_logits = bb.step(tokens, positions, slots, ops_cache,
                                         int(positions.max()) + 1)
        assert hidden.shape == ref_hidden.shape and logits.shape == ref_logits.shape
        assert_close(hidden, ref_hidden, f"hidden, step {step}")
        assert_close(logits, ref_logits, f"logits, step {step}")
        assert_close(fused_cache.k, ops_cache.k, "k cache")
        assert_close(fused_cache.v, ops_cache.v, "v cache")
        tokens = logits.argmax(-1)
        positions = positions + 1


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("length", [1, 7, 42])
def test_fused_prefill_matches_op_by_op(shape, wdtype, length):
    """A prompt is the same native call with one row per token of one slot (the packed-panel
    matmul from 8 rows on)."""
    bb = make_backbone(SHAPES[shape], wdtype)
    fused_cache, ops_cache = new_cache(bb, 2), new_cache(bb, 2)
    ids = torch.randint(0, bb.cfg.vocab_size, (length,), generator=torch.Generator().manual_seed(5))
    hidden, logits = fused_prefill(bb, ids, fused_cache, slot=1)
    ref_hidden, ref_logits = bb.prefill(ids, ops_cache, slot=1)
    assert hidden.shape == ref_hidden.shape and logits.shape == ref_logits.shape
    assert_close(hidden, ref_hidden, "hidden")
    assert_close(logits, ref_logits, "logits")
    assert_close(fused_cache.k, ops_cache.k, "k cache")
    assert_close(fused_cache.v, ops_cache.v, "v cache")


def test_large_gate_values_saturate_like_torch_silu():
    """Gates of +-80 and beyond: the vectorized exp must clamp, not overflow into NaN."""
    bb = make_backbone(SHAPES["awkward"], torch.float32, gate_scale=2000.0)
    fused_cache, ops_cache = prefilled_caches(bb, [4])
    args = (torch.tensor([5]), torch.tensor([4]), torch.tensor([0]))
    hidden, _ = fused_step(bb, fused_cache)(*args)
    ref, _ = bb.step(*args, ops_cache, 5)
    assert torch.isfinite(hidden).all()
    assert_close(hidden, ref, "hidden")


# Short rows, and rows whose keys attention splits across threads (from 64 keys).
@pytest.mark.parametrize("lengths", [[3, 17, 8], [70, 130, 9]])
def test_rows_are_independent_of_their_batch_and_slot(lengths):
    """Below 8 rows (the few-rows matmul kernel) a row's result is bit-identical alone or in a
    batch, in any slot: the server may batch sessions without changing anyone's audio."""
    bb = make_backbone(SHAPES["soprano"], torch.bfloat16, max_positions=160)
    together, alone = prefilled_caches(bb, lengths)
    step_all = fused_step(bb, together)
    step_one = fused_step(bb, alone)
    tokens, positions = torch.tensor([9, 1, 50]), torch.tensor(lengths)
    # rows in reverse slot order, to show slots need not be 0..B-1
    order = torch.tensor([2, 0, 1])
    hidden, logits = step_all(tokens[order], positions[order], order)
    for i, slot in enumerate(order.tolist()):
        h1, l1 = step_one(tokens[slot:slot + 1], positions[slot:slot + 1], torch.tensor([slot]))
        assert torch.equal(hidden[i:i + 1], h1) and torch.equal(logits[i:i + 1], l1)


def test_step_into_writes_each_rows_outputs_at_its_slot_and_nothing_else():
    """The engine's entry: row b's hidden state and logits land in row slots[b] of its
    buffers, the same bits as a plain call returns; other rows keep what they held."""
    bb = make_backbone(SHAPES["soprano"], torch.bfloat16, max_positions=160)
    lengths = [3, 17, 8]
    into, plain = prefilled_caches(bb, lengths)
    tokens, positions = torch.tensor([9, 1, 50]), torch.tensor(lengths)
    slots = torch.tensor([2, 0, 1])
    want_hidden, want_logits = fused_step(bb, plain)(tokens[slots], positions[slots], slots)
    hidden = torch.full((4, bb.cfg.hidden_size), 7.0)
    logits = torch.full((4, bb.cfg.vocab_size), 7.0)
    fused_step(bb, into).step_into(tokens[slots[:2]], positions[slots[:2]], slots[:2], hidden,
                                   logits)
    assert torch.equal(hidden[2], want_hidden[0]) and torch.equal(logits[2], want_logits[0])
    assert torch.equal(hidden[0], want_hidden[1]) and torch.equal(logits[0], want_logits[1])
    assert (hidden[[1, 3]] == 7).all() and (logits[[1, 3]] == 7).all()


@pytest.mark.parametrize("slots,rows,match", [
    ([1, 1], 4, "rows 0 and 1 both write the outputs of slot 1"),
    ([0, 2], 2, "row 1: output slot 2 outside \\[0, 2\\)"),
])
def test_step_into_refuses_rows_it_cannot_place(slots, rows, match):
    bb = make_backbone(SHAPES["grouped"], torch.bfloat16)
    step = fused_step(bb, new_cache(bb, 3))
    hidden, logits = torch.zeros(rows, bb.cfg.hidden_size), torch.zeros(rows, bb.cfg.vocab_size)
    with pytest.raises(ValueError, match=match):
        step.step_into(torch.tensor([5, 6]), torch.tensor([2, 3]), torch.tensor(slots), hidden,
                       logits)
    assert not hidden.any() and not logits.any()


def test_step_into_needs_buffers_of_the_models_widths():
    bb = make_backbone(SHAPES["grouped"], torch.bfloat16)
    step = fused_step(bb, new_cache(bb, 2))
    with pytest.raises(ValueError, match="hidden and logits must be contiguous float32 \\[S, 96\\] "
                                         "and \\[S, 64\\] on cpu, S > 0; got logits"):
        step.step_into(torch.tensor([5]), torch.tensor([2]), torch.tensor([0]),
                       torch.zeros(2, 96), torch.zeros(2, 63))


@pytest.mark.parametrize("tokens,positions,slots,match", [
    ([64], [2], [0], "row 0: token 64 outside \\[0, 64\\)"),
    ([-1], [2], [0], "token -1"),
    ([5], [64], [0], "row 0: position 64 outside \\[0, 64\\)"),
    ([5, 6], [2, 3], [1, 3], "row 1: slot 3 outside \\[0, 3\\)"),
    ([5, 6], [2, 2], [1, 1], "rows 0 and 1 both write position 2 of cache slot 1"),
])
def test_bad_rows_are_clear_errors_and_write_nothing(tokens, positions, slots, match):
    bb = make_backbone(SHAPES["grouped"], torch.bfloat16)
    cache = new_cache(bb, 2)
    step = fused_step(bb, cache)
    before = cache.k.clone()
    with pytest.raises(ValueError, match=match):
        step(torch.tensor(tokens), torch.tensor(positions), torch.tensor(slots))
    assert torch.equal(cache.k, before)


def test_mixed_float_dtypes_run_fused():
    """Matrices may differ in dtype (GGUF files mix types per tensor)."""
    bb = make_backbone(SHAPES["grouped"], torch.bfloat16)
    bb.weights.lm_head = bb.weights.lm_head.half()
    fused_cache, ops_cache = prefilled_caches(bb, [4])
    args = (torch.tensor([5]), torch.tensor([4]), torch.tensor([0]))
    hidden, logits = fused_step(bb, fused_cache)(*args)
    ref_hidden, ref_logits = bb.step(*args, ops_cache, 5)
    assert_close(hidden, ref_hidden, "hidden")
    assert_close(logits, ref_logits, "logits")


# One type per matrix, every type the kernels multiply (plain Q4_0, Q4_K and Q6_K, Q5_Kx8 and
# Q8_0x8 in the row-stack test).
QUANT_TYPES = {"wqkv": "Q8_0", "wo": "Q4_0x8", "w_gate_up": "Q4_Kx8", "w_down": "Q6_Kx8"}


def quantize_matrices(bb, lm_head="Q5_K"):
    w = bb.weights
    w.lm_head = quantized(w.lm_head, lm_head)
    for lw in w.layers:
        for name, qtype in QUANT_TYPES.items():
            setattr(lw, name, quantized(getattr(lw, name), qtype))
    return bb


@pytest.mark.parametrize("lengths", [[5], [1, 9, 30]])
def test_fused_step_over_quantized_matrices_matches_op_by_op(lengths):
    """The same int8 kernels through both paths (the table's quant_linear, one native step),
    and within the activations' 8-bit rounding of the fp32 math over the dequantized weights."""
    bb = quantize_matrices(make_backbone(SHAPES["soprano"], torch.float32))
    fused_cache, ops_cache, ref_cache = prefilled_caches(bb, lengths, n=3)
    fused = fused_step(bb, fused_cache)
    reference = Qwen3Backbone(bb.cfg, bb.weights, OpTable("cpu", torch.float32, "torch"))
    positions, slots = torch.tensor(lengths), torch.arange(len(lengths))
    tokens = torch.tensor([11, 40, 2][:len(lengths)])
    for step in range(3):
        hidden, logits = fused(tokens, positions, slots)
        span = int(positions.max()) + 1
        ops_hidden, ops_logits = bb.step(tokens, positions, slots, ops_cache, span)
        assert_close(hidden, ops_hidden, f"hidden, step {step}")
        assert_close(logits, ops_logits, f"logits, step {step}")
        ref_hidden, _ = reference.step(tokens, positions, slots, ref_cache, span)
        rel = ((hidden - ref_hidden).norm() / ref_hidden.norm()).item()
        assert rel < 0.03, f"step {step}: {rel:.3g} relative to the fp32 math"
        tokens, positions = logits.argmax(-1), positions + 1


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_fused_step_over_mixed_row_stacks_matches_op_by_op(rows):
    """llama.cpp's Q4_K_M stacks q and k in Q4_K over v in Q6_K: each part fills its own columns
    of the one q|k|v matmul, in the native step as through the table's linear. Every matrix is
    quantized, so both paths run the same kernels (a float matrix would go through torch's
    matmul op by op, and an activation on an int8 rounding boundary could round either way)."""
    bb = quantize_matrices(make_backbone(SHAPES["soprano"], torch.float32))
    q_rows = bb.cfg.num_heads * bb.cfg.head_dim
    kv_rows = bb.cfg.num_kv_heads * bb.cfg.head_dim
    for lw in bb.weights.layers:
        q, k, v = lw.wqkv.dequantized().split([q_rows, kv_rows, kv_rows])
        lw.wqkv = cat_rows([quantized(q, "Q4_K"), quantized(k, "Q8_0x8"), quantized(v, "Q6_K")])
        gate, up = lw.w_gate_up.dequantized().chunk(2)
        lw.w_gate_up = cat_rows([quantized(gate, "Q4_0"), quantized(up, "Q5_Kx8")])
    assert isinstance(bb.weights.layers[0].wqkv, RowStack)
    fused_cache, ops_cache = new_cache(bb, 1), new_cache(bb, 1)
    ids = torch.randint(0, bb.cfg.vocab_size, (rows,),
                        generator=torch.Generator().manual_seed(3))
    hidden, logits = fused_prefill(bb, ids, fused_cache, slot=0)
    ref_hidden, ref_logits = bb.prefill(ids, ops_cache, slot=0)
    assert_close(hidden, ref_hidden, "hidden")
    assert_close(logits, ref_logits, "logits")
    assert_close(fused_cache.k, ops_cache.k, "k cache")
    assert_close(fused_cache.v, ops_cache.v, "v cache")


def test_fused_prefill_over_quantized_matrices():
    """42 rows: the plain ggml layout (wqkv Q8_0) takes the dequantized fp32 GEMM, the x8
    layouts keep their int8 dots (faster there too); both paths run the same kernels, and the
    result is within the activations' 8-bit rounding of the fp32 math. The LM head sees the last
    row alone."""
    bb = quantize_matrices(make_backbone(SHAPES["soprano"], torch.float32))
    reference = Qwen3Backbone(bb.cfg, bb.weights, OpTable("cpu", torch.float32, "torch"))
    fused_cache, ops_cache, ref_cache = new_cache(bb, 1), new_cache(bb, 1), new_cache(bb, 1)
    ids = torch.randint(0, bb.cfg.vocab_size, (42,), generator=torch.Generator().manual_seed(5))
    hidden, logits = fused_prefill(bb, ids, fused_cache, slot=0)
    ops_hidden, _ = bb.prefill(ids, ops_cache, slot=0)
    assert_close(hidden, ops_hidden, "hidden")
    assert_close(logits, native_gguf.quant_linear_cpu(hidden, bb.weights.lm_head), "logits")
    ref_hidden, _ = reference.prefill(ids, ref_cache, slot=0)
    rel = ((hidden - ref_hidden).norm() / ref_hidden.norm()).item()
    assert rel < 0.03, f"{rel:.3g} relative to the fp32 math"


def test_quantized_types_without_a_kernel_step_op_by_op():
    bb = make_backbone(SHAPES["soprano"], torch.float32)
    bb.weights.lm_head = quantized(bb.weights.lm_head, "Q4_1")
    cache = new_cache(bb, 1)
    assert bb.ops.fused_step(bb.weights, cache.k, cache.v) is None
    with pytest.raises(ValueError, match="each matrix must be one of .* or a QuantMatrix "
                                         "\\(RowStack\\) of Q8_0"):
        native.Qwen3StepCpu(bb.weights, cache.k, cache.v)


def test_forced_torch_backend_has_no_fused_step():
    bb = make_backbone(SHAPES["grouped"], torch.bfloat16)
    cache = new_cache(bb, 1)
    assert OpTable("cpu", torch.float32, "torch").fused_step(bb.weights, cache.k, cache.v) is None
