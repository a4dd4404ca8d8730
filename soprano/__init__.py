"""soprano-tts: a fast inference engine and streaming server for the Soprano TTS model."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("soprano-tts")
except PackageNotFoundError:
    __version__ = "0.0.0+unknown"

from .api import SopranoTTS  # noqa: E402  (after __version__, which the CLI reads cheaply)

__all__ = ["SopranoTTS", "__version__"]
