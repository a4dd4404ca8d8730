"""soprano-tts: a fast inference engine and streaming server for the Soprano TTS model.

``SopranoTTS`` is imported on first use, so ``import soprano.cli`` (argument parsing, man page
generation at build time) does not load torch.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("soprano-tts")
except PackageNotFoundError:
    __version__ = "0.0.0+unknown"

__all__ = ["SopranoTTS", "__version__"]


def __getattr__(name):
    if name == "SopranoTTS":
        from .api import SopranoTTS
        return SopranoTTS
    raise AttributeError(f"module 'soprano' has no attribute '{name}'")
