"""The torch-free CPU engine: a model's whole generation and decode in native calls and numpy,
for a process whose memory and start-up are the model's, not torch's (``tts``)."""
from .tts import LeanTTS

__all__ = ["LeanTTS"]
