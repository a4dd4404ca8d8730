"""Backbone hyper-parameters, read from ``config.json`` and checked against the weights."""
import json
from dataclasses import dataclass

from ..errors import ModelFileError


@dataclass(frozen=True)
class BackboneConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    max_positions: int
    eos_token_id: int

    @classmethod
    def from_json(cls, path) -> "BackboneConfig":
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ModelFileError(path, f"cannot read config: {e}") from e
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw, path) -> "BackboneConfig":
        """From ``config.json``'s parsed object; ``path`` names it in errors."""
        if not isinstance(raw, dict):
            raise ModelFileError(path, "config is not a JSON object")

        def need(key, kind=int):
            if key not in raw:
                raise ModelFileError(path, f"missing key '{key}'")
            try:
                return kind(raw[key])
            except (TypeError, ValueError) as e:
                raise ModelFileError(path, f"key '{key}' has a bad value {raw[key]!r}") from e

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        rope = raw.get("rope_parameters") or {}
        eos = raw.get("eos_token_id", 3)
        return cls(
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            num_layers=need("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads", heads)),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            intermediate_size=need("intermediate_size"),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
            max_positions=int(raw.get("max_position_embeddings", 1024)),
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
        )
