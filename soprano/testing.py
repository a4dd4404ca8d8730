"""Random-weight Soprano checkpoints in the published layout, for tests and benchmarks.

Real weights cannot be fetched everywhere (CI has no model hub), and parity with upstream only
needs the same file on both sides. ``write_checkpoint`` writes ``config.json``,
``model.safetensors``, ``tokenizer.json`` (+ ``tokenizer_config.json`` so upstream's
``AutoTokenizer`` loads it) and ``decoder.pth`` exactly as the published models lay them out.

``python -m soprano.testing DIR [--preset real|real-80m|tiny]`` (or ``soprano-tts testmodel``)
writes one from the command line. Presets: ``real`` (Soprano-1.1-80M shapes), ``real-80m``
(the older D=512, embed k=3 decoder) and ``tiny`` (2 backbone layers; the decoder keeps the
shapes upstream's code hard-codes, so upstream can still load it).
Random weights rarely emit EOS: bound generation with ``max_new_tokens``.
The LM head is scaled up so the greedy choice never sits on a near-tie, which keeps token-level
parity with upstream (it samples at temperature 0.001) meaningful.
"""
import json
import os
from dataclasses import dataclass, replace

import torch
from safetensors.torch import save_file

SPECIAL_TOKENS = ["[UNK]", "[TEXT]", "[START]", "[STOP]"]
N_AUDIO_TOKENS = 8000


@dataclass(frozen=True)
class CheckpointShape:
    vocab_size: int = 8192
    hidden_size: int = 512
    num_hidden_layers: int = 17
    num_attention_heads: int = 4
    num_key_value_heads: int = 1
    head_dim: int = 128
    intermediate_size: int = 2304
    max_position_embeddings: int = 1024
    decoder_dim: int = 768
    decoder_embed_kernel: int = 1
    decoder_layers: int = 8
    backbone_dtype: torch.dtype = torch.bfloat16
    decoder_dtype: torch.dtype = torch.float16


PRESETS = {
    "real": CheckpointShape(),
    "real-80m": CheckpointShape(decoder_dim=512, decoder_embed_kernel=3),
    "tiny": CheckpointShape(num_hidden_layers=2, intermediate_size=1024,
                            backbone_dtype=torch.float32, decoder_dtype=torch.float32),
}


def _corpus():
    """Deterministic English-like text for the BPE merges (words, number words, punctuation)."""
    import inflect
    engine = inflect.engine()
    words = ("the quick brown fox jumps over lazy dog hello world this is a test of speech "
             "synthesis with soprano voice agents readers games stream audio first words "
             "many streams per gpu laptop cpu server model file quantize doctor mister saint "
             "january february march april may june july august september october november "
             "december monday tuesday wednesday thursday friday saturday sunday percent dollars "
             "cents pounds euros point and or but not yes no what when where why how").split()
    lines = [" ".join(words[i:i + 12]) + "." for i in range(0, len(words), 12)]
    lines += [engine.number_to_words(n) for n in range(0, 3000, 7)]
    lines += [engine.ordinal(engine.number_to_words(n)) for n in range(1, 200)]
    return lines


def build_tokenizer(vocab_size: int = 8192):
    """Character-level BPE over lowercase text; specials at 0-3, audio tokens [0]..[7999] next."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(),
                                           normalizers.Replace(Regex(r"\s+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(Regex(r"\s+|\w+|[^\w\s]+"), behavior="isolated"),
    ])
    specials = SPECIAL_TOKENS + [f"[{i}]" for i in range(N_AUDIO_TOKENS)]
    alphabet = [chr(c) for c in range(32, 127) if not chr(c).isupper()]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def _config_json(s: CheckpointShape) -> dict:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": s.vocab_size,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_hidden_layers,
        "num_attention_heads": s.num_attention_heads,
        "num_key_value_heads": s.num_key_value_heads,
        "head_dim": s.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": s.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "bos_token_id": 3,
        "eos_token_id": 3,
        "torch_dtype": str(s.backbone_dtype).removeprefix("torch."),
    }


def backbone_state_dict(s: CheckpointShape, gen: torch.Generator) -> dict:
    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    def norm_weight(n):
        return 1.0 + normal(n, std=0.1)

    H, D, I = s.hidden_size, s.head_dim, s.intermediate_size
    sd = {"model.embed_tokens.weight": normal(s.vocab_size, H, std=1.0),
          "model.norm.weight": norm_weight(H),
          "lm_head.weight": normal(s.vocab_size, H, std=1.0)}
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm_weight(H)
        sd[p + "post_attention_layernorm.weight"] = norm_weight(H)
        sd[p + "self_attn.q_proj.weight"] = normal(s.num_attention_heads * D, H, std=0.05)
        sd[p + "self_attn.k_proj.weight"] = normal(s.num_key_value_heads * D, H, std=0.05)
        sd[p + "self_attn.v_proj.weight"] = normal(s.num_key_value_heads * D, H)
        sd[p + "self_attn.o_proj.weight"] = normal(H, s.num_attention_heads * D)
        sd[p + "self_attn.q_norm.weight"] = norm_weight(D)
        sd[p + "self_attn.k_norm.weight"] = norm_weight(D)
        sd[p + "mlp.gate_proj.weight"] = normal(I, H)
        sd[p + "mlp.up_proj.weight"] = normal(I, H)
        sd[p + "mlp.down_proj.weight"] = normal(H, I)
    return {k: v.to(s.backbone_dtype).contiguous() for k, v in sd.items()}


def decoder_state_dict(s: CheckpointShape, gen: torch.Generator, hidden_size: int = 512) -> dict:
    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    D = s.decoder_dim
    sd = {"decoder.embed.weight": normal(D, hidden_size, s.decoder_embed_kernel, std=0.05),
          "decoder.embed.bias": normal(D),
          "decoder.norm.weight": 1.0 + normal(D, std=0.1),
          "decoder.norm.bias": normal(D)}
    for i in range(s.decoder_layers):
        p = f"decoder.convnext.{i}."
        sd[p + "dwconv.weight"] = normal(D, 1, 3, std=0.3)
        sd[p + "dwconv.bias"] = normal(D)
        sd[p + "norm.weight"] = 1.0 + normal(D, std=0.1)
        sd[p + "norm.bias"] = normal(D)
        sd[p + "pwconv1.weight"] = normal(3 * D, D, std=0.04)
        sd[p + "pwconv1.bias"] = normal(3 * D)
        sd[p + "pwconv2.weight"] = normal(D, 3 * D, std=0.04)
        sd[p + "pwconv2.bias"] = normal(D)
        sd[p + "gamma"] = torch.full((D,), s.decoder_layers ** -0.5) + normal(D)
    sd["decoder.final_layer_norm.weight"] = 1.0 + normal(D, std=0.1)
    sd["decoder.final_layer_norm.bias"] = normal(D)
    sd["head.out.weight"] = normal(2050, D, std=0.05)
    sd["head.out.bias"] = normal(2050)
    sd = {k: v.to(s.decoder_dtype) for k, v in sd.items()}
    sd["head.istft.window"] = torch.hann_window(2048)
    return sd


def write_checkpoint(path, preset: str = "tiny", seed: int = 0, **overrides) -> str:
    """Write a random-weight checkpoint in the published layout into ``path``; returns it."""
    shape = replace(PRESETS[preset], **overrides)
    os.makedirs(path, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    save_file(backbone_state_dict(shape, gen), os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    torch.save(decoder_state_dict(shape, gen, shape.hidden_size),
               os.path.join(path, "decoder.pth"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(_config_json(shape), f, indent=2)
    build_tokenizer(shape.vocab_size).save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]",
                   "bos_token": "[STOP]", "eos_token": "[STOP]", "pad_token": "[STOP]",
                   "padding_side": "left", "model_max_length": shape.max_position_embeddings},
                  f, indent=2)
    return str(path)


if __name__ == "__main__":
    import sys

    from .cli import main
    raise SystemExit(main(["testmodel", *sys.argv[1:]]))


@torch.inference_mode()
def teacher_forced(backbone, prompt: list[int], tokens: list[int]):
    """(hidden [N, H], logits [N, V]) of ``prompt`` followed by ``tokens`` fed rather than
    sampled: row i is the state that predicted ``tokens[i]``, as generation keeps it. Random
    weights make greedy paths of two nearly equal models diverge, so quantized models are
    compared with the reference on one forced sequence."""
    from .runtime.kv_cache import KVCache
    cache = KVCache(backbone.cfg, 1, backbone.dtype, backbone.device)
    hidden, logits = backbone.prefill(torch.tensor(prompt, device=backbone.device), cache, 0)
    states, scores = [hidden], [logits]
    for i, token in enumerate(tokens[:-1]):
        h, z = backbone.step(*(torch.tensor([v], device=backbone.device)
                               for v in (token, len(prompt) + i, 0)), cache)
        states.append(h[0])
        scores.append(z[0])
    return torch.stack(states).float().cpu().numpy(), torch.stack(scores).float().cpu().numpy()


def snr_db(reference, x) -> float:
    """Signal-to-noise ratio of ``x`` against ``reference``, in dB."""
    import numpy as np
    ref = np.asarray(reference, np.float64)
    noise = np.sum((ref - np.asarray(x, np.float64)) ** 2)
    return float(10 * np.log10(np.sum(ref ** 2) / max(noise, 1e-300)))
