"""Incremental text chunker: cuts a growing text buffer into synthesis chunks.

The Soprano-RS algorithm, kept so chunk boundaries match: boundaries are ``. ? ! ; :`` and
newline; cut at the first boundary where the chunk has at least ``min_chars`` characters and
``min_words`` whitespace-separated words, looking no further than ``max_chars``; when there is
none and the buffer holds ``max_chars`` or more, cut at the last space before ``max_chars`` (or
hard at ``max_chars``). So no chunk is longer than ``max_chars``, however the text arrives (the
Rust server looked at every boundary in the buffer, so one long message could make a longer
chunk). The time-based cut (``max_delay_ms``) belongs to the session, which calls ``take_all``.
"""
BOUNDARIES = frozenset(".?!;:\n")


class Chunker:
    def __init__(self, min_chars: int, min_words: int, max_chars: int):
        self.min_chars, self.min_words, self.max_chars = min_chars, min_words, max_chars
        self.buffer = ""

    def configure(self, min_chars: int, min_words: int, max_chars: int) -> None:
        self.min_chars, self.min_words, self.max_chars = min_chars, min_words, max_chars

    def push(self, text: str) -> list[str]:
        """Append text; return the chunks that are now complete (possibly none)."""
        self.buffer += text
        chunks = []
        while (chunk := self._cut()) is not None:
            if chunk.strip():
                chunks.append(chunk.strip())
        return chunks

    def take_all(self) -> str:
        """Everything buffered (for flush or the delay timer), minimums ignored."""
        text, self.buffer = self.buffer.strip(), ""
        return text

    def clear(self) -> None:
        self.buffer = ""

    def _cut(self) -> str | None:
        buf = self.buffer
        # Only boundaries within max_chars: a chunk never exceeds it, and text pushed at once is
        # cut as it would be if it had arrived a character at a time.
        for i, ch in enumerate(buf[:self.max_chars]):
            if ch in BOUNDARIES:
                candidate = buf[:i + 1]
                if (len(candidate.strip()) >= self.min_chars
                        and len(candidate.split()) >= self.min_words):
                    self.buffer = buf[i + 1:]
                    return candidate
        if len(buf) >= self.max_chars:
            space = buf.rfind(" ", 0, self.max_chars)
            end = space if space > 0 else self.max_chars
            self.buffer = buf[end:]
            return buf[:end]
        return None
