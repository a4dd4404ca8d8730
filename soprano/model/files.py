"""Names of the published model and its files, and its tokenizer's load, importable without
torch (the CLI's download, list and cache commands need them and should start fast, and the
torch-free engine loads the tokenizer)."""
from pathlib import Path

from ..errors import ModelFileError

DEFAULT_MODEL_ID = "ekwek/Soprano-1.1-80M"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "decoder.pth")


def load_tokenizer(model_dir: Path):
    """``tokenizer.json`` of a model directory in the published layout."""
    from tokenizers import Tokenizer
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ModelFileError(path, "file is missing")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise ModelFileError(path, f"not a readable tokenizer ({e})") from e
