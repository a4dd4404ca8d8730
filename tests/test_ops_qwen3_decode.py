"""The fused CPU decode step (ops.fused_decode_step, csrc/cpu/qwen3_step.cpp) against the
op-by-op step (Qwen3Backbone.decode_ops), over shapes x weight dtypes x batch layouts."""
import pytest
import torch

from soprano import _ext, ops
from soprano.model.config import BackboneConfig
from soprano.model.qwen3 import LayerWeights, Qwen3Backbone

pytestmark = pytest.mark.skipif(not _ext.has_native(), reason="soprano._C not built")

# (hidden, heads, kv_heads, head_dim, intermediate, vocab, layers): Soprano's own layer shapes,
# and awkward ones (no multiple of 8 anywhere, grouped and ungrouped heads).
SHAPES = {"soprano": (512, 4, 1, 128, 2304, 300, 2),
          "awkward": (100, 3, 3, 34, 203, 97, 3),
          "grouped": (96, 6, 2, 16, 130, 64, 2)}


def make_backbone(shape, wdtype, seed=0, gate_scale=1.0):
    H, NH, KVH, D, I, V, n_layers = shape
    cfg = BackboneConfig(vocab_size=V, hidden_size=H, num_layers=n_layers, num_heads=NH,
                         num_kv_heads=KVH, head_dim=D, intermediate_size=I, rms_norm_eps=1e-6,
                         rope_theta=10000.0, max_positions=64, eos_token_id=3)
    gen = torch.Generator().manual_seed(seed)

    def normal(*size, std=0.05):
        return torch.randn(*size, generator=gen) * std

    def norm(n):
        return 1.0 + normal(n, std=0.1)

    layers = []
    for _ in range(n_layers):
        gate_up = normal(2 * I, H)
        gate_up[:I] *= gate_scale
        layers.append(LayerWeights(
            attn_norm=norm(H), wqkv=normal((NH + 2 * KVH) * D, H).to(wdtype), q_norm=norm(D),
            k_norm=norm(D), wo=normal(H, NH * D).to(wdtype), ffn_norm=norm(H),
            w_gate_up=gate_up.to(wdtype), w_down=normal(H, I).to(wdtype)))
    return Qwen3Backbone(cfg, normal(V, H, std=1.0), layers, norm(H),
                         normal(V, H, std=1.0).to(wdtype))


def prefilled_caches(bb, lengths, n=2):
    """``n`` identical caches with slot b prefilled with ``lengths[b]`` random tokens."""
    gen = torch.Generator().manual_seed(7)
    caches = [bb.new_cache(len(lengths)) for _ in range(n)]
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
    positions = torch.tensor(lengths)
    tokens = torch.tensor([11, 40, 2][:len(lengths)])
    for step in range(3):
        kv_len = int(positions.max()) + 1
        mask = None
        if len(lengths) > 1:
            mask = (torch.arange(kv_len)[None, :] <= positions[:, None])[:, None, None, :]
        hidden, logits = bb.decode(tokens, positions, fused_cache, kv_len, mask)
        ref_hidden, ref_logits = bb.decode_ops(tokens, positions, ops_cache, kv_len, mask)
        assert fused_cache.fused_step, "the fused step did not run"
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
    fused_cache, ops_cache = bb.new_cache(2), bb.new_cache(2)
    ids = torch.randint(0, bb.cfg.vocab_size, (length,), generator=torch.Generator().manual_seed(5))
    hidden, logits = bb.prefill(ids, fused_cache, slot=1)
    ref_hidden, ref_logits = bb.prefill_ops(ids, ops_cache, slot=1)
    assert fused_cache.fused_step, "the fused prefill did not run"
    assert hidden.shape == ref_hidden.shape and logits.shape == ref_logits.shape
    assert_close(hidden, ref_hidden, "hidden")
    assert_close(logits, ref_logits, "logits")
    assert_close(fused_cache.k, ops_cache.k, "k cache")
    assert_close(fused_cache.v, ops_cache.v, "v cache")


def test_large_gate_values_saturate_like_torch_silu():
    """Gates of +-80 and beyond: the vectorized exp must clamp, not overflow into NaN."""
    bb = make_backbone(SHAPES["awkward"], torch.float32, gate_scale=2000.0)
    fused_cache, ops_cache = prefilled_caches(bb, [4])
    args = (torch.tensor([5]), torch.tensor([4]))
    hidden, _ = bb.decode(*args, fused_cache, 5, None)
    ref, _ = bb.decode_ops(*args, ops_cache, 5, None)
    assert torch.isfinite(hidden).all()
    assert_close(hidden, ref, "hidden")


def test_rows_are_independent_of_their_batch_and_slot():
    """Below 8 rows (the few-rows matmul kernel) a row's result is bit-identical alone or in a
    batch, in any slot: the server may batch sessions without changing anyone's audio."""
    bb = make_backbone(SHAPES["soprano"], torch.bfloat16)
    lengths = [3, 17, 8]
    together, alone = prefilled_caches(bb, lengths)
    step_all = ops.fused_decode_step(bb, together)
    step_one = ops.fused_decode_step(bb, alone)
    tokens, positions = torch.tensor([9, 1, 50]), torch.tensor(lengths)
    # rows in reverse slot order, to show slots need not be 0..B-1
    order = torch.tensor([2, 0, 1])
    hidden, logits = step_all(tokens[order], positions[order], order)
    for i, slot in enumerate(order.tolist()):
        h1, l1 = step_one(tokens[slot:slot + 1], positions[slot:slot + 1], torch.tensor([slot]))
        assert torch.equal(hidden[i:i + 1], h1) and torch.equal(logits[i:i + 1], l1)


@pytest.mark.parametrize("tokens,positions,slots,match", [
    ([64], [2], [0], "row 0: token 64 outside \\[0, 64\\)"),
    ([-1], [2], [0], "token -1"),
    ([5], [64], [0], "row 0: position 64 outside \\[0, 64\\)"),
    ([5, 6], [2, 3], [1, 2], "row 1: slot 2 outside \\[0, 2\\)"),
    ([5, 6], [2, 2], [1, 1], "rows 0 and 1 both write position 2 of cache slot 1"),
])
def test_bad_rows_are_clear_errors_and_write_nothing(tokens, positions, slots, match):
    bb = make_backbone(SHAPES["grouped"], torch.bfloat16)
    cache = bb.new_cache(2)
    step = ops.fused_decode_step(bb, cache)
    before = cache.k.clone()
    with pytest.raises(ValueError, match=match):
        step(torch.tensor(tokens), torch.tensor(positions), torch.tensor(slots))
    assert torch.equal(cache.k, before)


def test_mixed_matrix_dtypes_fall_back_to_op_by_op():
    bb = make_backbone(SHAPES["grouped"], torch.bfloat16)
    bb.lm_head = bb.lm_head.half()
    assert ops.fused_decode_step(bb, bb.new_cache(1)) is None
