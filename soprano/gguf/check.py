"""What a GGUF model is made of, read from headers alone (no torch, no tensor data): the
backbone's config, tokenizer and tensor names, and a check that every tensor the loader needs is
there with a readable type and the right shape. ``list`` and ``cache`` use it to tell a usable
GGUF model from a broken one without loading it."""
from . import audiocpp, backbone
from .decoder import decoder_names
from .file import open_gguf
from .tokenizer import tokenizer_from_gguf


def backbone_parts(gf):
    """(config, tokenizer, our name -> the file's) of a backbone GGUF: llama.cpp's qwen3 file
    or audio.cpp's one-file layout."""
    if gf.get("general.architecture", str, default=None) == audiocpp.ARCH:
        return audiocpp.backbone_config(gf), audiocpp.tokenizer(gf), audiocpp.tensor_names(gf)
    return backbone.backbone_config(gf), tokenizer_from_gguf(gf), backbone.tensor_names(gf)


def check_header(files) -> None:
    """Raise ``ModelFileError`` unless ``files`` (GGUF backbone, GGUF or .pth decoder) hold a
    Soprano model by their headers: config, tokenizer and every tensor named, typed and shaped
    as the loader needs (no tensor data is read)."""
    gf = open_gguf(files.backbone)
    cfg, _, names = backbone_parts(gf)
    H, D, I = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    shapes = {"input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,),
              "self_attn.q_proj.weight": (cfg.num_heads * D, H),
              "self_attn.k_proj.weight": (cfg.num_kv_heads * D, H),
              "self_attn.v_proj.weight": (cfg.num_kv_heads * D, H),
              "self_attn.o_proj.weight": (H, cfg.num_heads * D),
              "self_attn.q_norm.weight": (D,), "self_attn.k_norm.weight": (D,),
              "mlp.gate_proj.weight": (I, H), "mlp.up_proj.weight": (I, H),
              "mlp.down_proj.weight": (H, I)}
    for ours, theirs in names.items():
        short = ours.split(".", 3)[-1] if ours.startswith("model.layers.") else None
        gf.tensor(theirs, shapes.get(short) if short else None)
    if files.decoder.suffix.lower() == ".gguf":
        dec = open_gguf(files.decoder)
        for theirs in decoder_names(dec).values():
            dec.tensor(theirs)
