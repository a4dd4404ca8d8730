"""The engine on a CUDA GPU against the same engine on CPU (runs where a GPU is present;
``bench/gpu_check.sh`` runs it on a lent GPU machine)."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

TEXT = "Hello there, how are you doing on this fine day? I am doing very well, thank you."


@pytest.fixture(scope="module")
def gpu_fp32(tiny_ckpt):
    from soprano import SopranoTTS
    return SopranoTTS(tiny_ckpt, device="cuda", dtype="float32")


def test_fp32_gpu_matches_cpu(gpu_fp32, tiny_tts):
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu = gpu_fp32.generate([TEXT], max_new_tokens=24)[0]
    cpu = tiny_tts.generate([TEXT], max_new_tokens=24)[0]
    for g, c in zip(gpu, cpu):
        assert g.generated.token_ids == c.generated.token_ids
        assert np.abs(g.generated.hidden - c.generated.hidden).max() <= 1e-3
    a_gpu = gpu_fp32.infer(TEXT, max_new_tokens=24)
    a_cpu = tiny_tts.infer(TEXT, max_new_tokens=24)
    assert a_gpu.shape == a_cpu.shape and np.abs(a_gpu - a_cpu).max() <= 1e-2


def test_bf16_gpu_streams_losslessly(tiny_ckpt):
    from soprano import SopranoTTS
    tts = SopranoTTS(tiny_ckpt, device="cuda")
    assert tts.dtype == torch.bfloat16
    text = "A single sentence, long enough to stand alone."
    whole = tts.infer(text, max_new_tokens=24)
    streamed = np.concatenate(list(tts.infer_stream(text, chunk_size=2, max_new_tokens=24)))
    assert streamed.shape == whole.shape and np.isfinite(whole).all()
    assert np.abs(streamed - whole).max() <= 1e-3


def test_cuda_graph_decode_matches_eager(tiny_ckpt):
    from soprano import SopranoTTS
    texts = [TEXT, "A second text that is long enough to be its own sentence here."]
    eager = SopranoTTS(tiny_ckpt, device="cuda", dtype="float32", cuda_graphs=False)
    graphed = SopranoTTS(tiny_ckpt, device="cuda", dtype="float32")
    assert graphed.engine.runner.name == "cuda-graph" and eager.engine.runner.name == "eager"
    for e_text, g_text in zip(eager.generate(texts, max_new_tokens=20),
                              graphed.generate(texts, max_new_tokens=20)):
        for e, g in zip(e_text, g_text):
            assert e.generated.token_ids == g.generated.token_ids
            assert np.abs(e.generated.hidden - g.generated.hidden).max() <= 1e-4


def test_engine_on_cuda_graphs_matches_eager_alone(gpu_fp32):
    """The one engine on a GPU: rows in explicit slots through the CUDA-graph buckets (padding
    rows write the spare slot), a sentence joining late and one paused: each gets what the
    eager runner gives it alone."""
    from soprano.runtime.engine import Engine, Sequence
    from soprano.runtime.sentences import prompt_ids
    from soprano.runtime.runners import EagerRunner
    torch.backends.cuda.matmul.allow_tf32 = False
    engine = gpu_fp32.engine
    assert engine.runner.name == "cuda-graph"
    texts = [TEXT, "A second text that is long enough to be its own sentence here.", "Third."]
    prompts = [prompt_ids(gpu_fp32.tokenizer, t) for t in texts]
    seqs = [Sequence(p, 12) for p in prompts]
    got = {s: [] for s in seqs}
    engine.add(seqs[1])  # slot 0
    engine.add(seqs[0])  # slot 1: rows need not be slots 0..B-1
    step = 0
    while engine.members() or step < 3:
        if step == 2:
            engine.add(seqs[2])
            seqs[0].active = False
        if step == 5:
            seqs[0].active = True
        for e in engine.step():
            got[e.seq].append((e.token, e.hidden.float().cpu().numpy()))
        step += 1
    alone = Engine(gpu_fp32.backbone, max_batch=1, cuda_graphs=False)
    assert isinstance(alone.runner, EagerRunner)
    for seq, prompt in zip(seqs, prompts):
        ref = Sequence(prompt, 12)
        alone.add(ref)
        ref_out = []
        while alone.members():
            ref_out += [(e.token, e.hidden.float().cpu().numpy()) for e in alone.step()]
        assert [t for t, _ in got[seq]] == [t for t, _ in ref_out]
        hidden = np.array([h for t, h in got[seq] if t != engine.eos])
        ref_hidden = np.array([h for t, h in ref_out if t != engine.eos])
        assert np.abs(hidden - ref_hidden).max() <= 1e-3


def test_backend_table_on_a_gpu_picks_native_kernels():
    from soprano.ops import OpTable
    table = OpTable("cuda", torch.bfloat16)
    assert table.describe()["rms_norm"] in ("cuda", "triton")
    forced = OpTable("cuda", torch.bfloat16, "triton")
    assert forced.describe()["rms_norm"] == "triton"
