"""The Soprano models we know by name: what `list` shows before anything is downloaded, and
which files `download` fetches for each when --files is not given."""
from dataclasses import dataclass

from ..model.files import MODEL_FILES


@dataclass(frozen=True)
class KnownModel:
    repo_id: str
    layout: str         # "safetensors" (the published HF layout) or "gguf"
    description: str
    patterns: tuple     # files `download` fetches when --files is not given


_HF_LAYOUT = tuple(MODEL_FILES) + ("*.json",)  # what the loader reads, no more
CATALOGUE = (
    KnownModel("ekwek/Soprano-1.1-80M", "safetensors", "Soprano 1.1, 80M parameters (default)",
               _HF_LAYOUT),
    KnownModel("ekwek/Soprano-80M", "safetensors", "Soprano 1.0, 80M parameters (D=512 decoder)",
               _HF_LAYOUT),
    KnownModel("WalkingCat/Soprano-1.1-80M-GGUF", "gguf",
               "community GGUF conversion of Soprano 1.1 (audio.cpp)", ("*.gguf",)),
    KnownModel("hans00/Soprano-1.1-80M-GGUF", "gguf",
               "community GGUF conversion of Soprano 1.1 (backbone + codec files)", ("*.gguf",)),
)
KNOWN = {m.repo_id: m for m in CATALOGUE}
