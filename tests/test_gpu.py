"""The engine on a CUDA GPU against the same engine on CPU (runs where a GPU is present;
``bench/gpu_check.sh`` runs it on a lent GPU machine)."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

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
    assert graphed.engine.graphed is not None and eager.engine.graphed is None
    for e_text, g_text in zip(eager.generate(texts, max_new_tokens=20),
                              graphed.generate(texts, max_new_tokens=20)):
        for e, g in zip(e_text, g_text):
            assert e.generated.token_ids == g.generated.token_ids
            assert np.abs(e.generated.hidden - g.generated.hidden).max() <= 1e-4


def test_continuous_batch_on_cuda_graphs_matches_alone(gpu_fp32):
    """The server's batch on a GPU: the dense slots-0..B-1 path through the CUDA graphs, with
    a sentence joining late and one paused: each gets what it gets alone."""
    from soprano import text as textproc
    from soprano.runtime.continuous import ContinuousBatch, Sequence
    from soprano.runtime.engine import Engine
    from soprano.runtime.sampling import SamplingParams
    torch.backends.cuda.matmul.allow_tf32 = False
    engine = Engine(gpu_fp32.backbone, gpu_fp32.tokenizer, max_batch=4)
    assert engine.graphed is not None
    batch = ContinuousBatch(engine, SamplingParams())
    assert batch.fused is None
    texts = [TEXT, "A second text that is long enough to be its own sentence here.", "Third."]
    prompts = [engine.encode(textproc.format_prompt(t)) for t in texts]
    seqs = [Sequence(p, 12) for p in prompts]
    got = {id(s): [] for s in seqs}
    batch.join(seqs[0])
    batch.join(seqs[1])
    step = 0
    while batch.members() or step < 3:
        if step == 2:
            batch.join(seqs[2])
            seqs[0].active = False
        if step == 5:
            seqs[0].active = True
        for e in batch.step():
            got[id(e.seq)].append((e.token, e.hidden.float().cpu().numpy()))
        step += 1
    alone = Engine(gpu_fp32.backbone, gpu_fp32.tokenizer, max_batch=1, cuda_graphs=False)
    for seq, prompt in zip(seqs, prompts):
        ref = alone.generate([prompt], SamplingParams(), 12)[0]
        tokens = [t for t, _ in got[id(seq)] if t != engine.eos]
        assert tokens == ref.token_ids
        hidden = np.array([h for t, h in got[id(seq)] if t != engine.eos])
        assert np.abs(hidden - ref.hidden).max() <= 1e-3
