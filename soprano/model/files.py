"""Names of the published model and its files, importable without torch (the CLI's download,
list and cache commands need them and should start fast)."""

DEFAULT_MODEL_ID = "ekwek/Soprano-1.1-80M"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "decoder.pth")
