"""The one tempo range every interface accepts: ``--speed``, WebSocket ``config`` and OpenAI's
``speed``.

A tempo change re-times the decoder's frame grid (``VocosDecoder(hidden, speed)``): each token
gets 4 / speed frames of 512 samples. From 0.5 to 2.0 (the Soprano-RS server's range) that is 8
to 2 frames per token; beyond, frames interpolated from one state smear (slower) or tokens fall
between frames (faster). OpenAI's API allows 0.25..4.0; ours answers values outside this range
with an ``invalid_value`` error naming it, like any other bad field. No imports: the CLI's
parser (built without torch or numpy for the man pages) reads it too.
"""
SPEED_RANGE = (0.5, 2.0)
