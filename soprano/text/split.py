"""Splitting: text -> sentences of at most 300 characters -> model prompts.

Upstream's splitter and merger reproduced character for character (``QUIRK`` marks oddities
kept for parity): sentences end at '!', '?', '.' + space or a newline, outside quotes; short
ones are glued to a neighbour. ``prepare_sentences`` runs the whole pipeline (normalization
first); ``format_prompt`` wraps one sentence as ``[STOP][TEXT]{sentence}[START]``.
"""
from __future__ import annotations

import re

from .normalize import clean_text


class _ChunkScanner:
    """Cursor over the text that accumulates the characters of the chunk being built.

    Moving backwards un-reads characters.  ``in_quote`` flips whenever the cursor lands on a
    '"'; QUIRK: when moving backwards that is the character the cursor moves *onto*, not the one
    it un-reads (kept for parity with the reference).
    """

    def __init__(self, text: str):
        self.text = text
        self.pos = -1
        self.last = len(text) - 1
        self.chunk = ""
        self.in_quote = False

    def _landed(self) -> str:
        char = self.text[self.pos]
        if char == '"':
            self.in_quote = not self.in_quote
        return char

    def forward(self, steps: int = 1) -> str:
        for _ in range(steps):
            self.pos += 1
            self.chunk += self.text[self.pos]
            self._landed()
        return self.text[self.pos]

    def backward(self, steps: int = 1) -> str:
        for _ in range(steps):
            self.pos -= 1
            self.chunk = self.chunk[:-1]
            self._landed()
        return self.text[self.pos]

    def ahead(self, offset: int) -> str:
        """Character ``offset`` places from the cursor, or "" out of range.

        QUIRK: the final character of the text also counts as out of range, and "" is contained
        in every string, so membership tests against it succeed at the end of the text.
        """
        index = self.pos + offset
        return self.text[index] if 0 <= index < self.last else ""


_PUNCTUATION_ONLY_RE = re.compile(r"[\s.,;:!?]*")


def split_sentences(text: str, desired_length: int = 1, max_length: int = 300) -> list[str]:
    """Cut text into sentence chunks no longer than ``max_length`` characters.

    A chunk ends at '!', '?', a newline, or a '.' followed by whitespace, outside double quotes
    (runs of '!?.' stay with their sentence); a closing quote followed by whitespace is a
    candidate cut point.  A chunk reaching ``max_length`` is cut at the last candidate point, or
    failing that at the last space/punctuation.  Chunks are stripped and chunks consisting only
    of whitespace/punctuation are dropped.
    """
    text = re.sub(r"\n\n+", "\n", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"[“”]", '"', text)

    scan = _ChunkScanner(text)
    chunks: list[str] = []
    cut_points: list[int] = []

    def close_chunk() -> None:
        chunks.append(scan.chunk)
        scan.chunk = ""
        cut_points.clear()

    while scan.pos < scan.last:
        char = scan.forward()
        if len(scan.chunk) >= max_length:
            if cut_points and len(scan.chunk) > desired_length / 2:
                scan.backward(scan.pos - cut_points[-1])
            else:
                while (char not in "!?.\n " and scan.pos > 0
                       and len(scan.chunk) > desired_length):
                    char = scan.backward()
            close_chunk()
        elif not scan.in_quote and (
                char in "!?\n" or (char == "." and scan.ahead(1) in "\n ")):
            # swallow a run of terminators ("?!", "...") while there is room
            while (scan.pos < len(text) - 1 and len(scan.chunk) < max_length
                   and scan.ahead(1) in "!?."):
                char = scan.forward()
            cut_points.append(scan.pos)
            if len(scan.chunk) >= desired_length:
                close_chunk()
        elif scan.in_quote and scan.ahead(1) == '"' and scan.ahead(2) in "\n ":
            scan.forward(2)
            cut_points.append(scan.pos)
    chunks.append(scan.chunk)

    stripped = (chunk.strip() for chunk in chunks)
    return [c for c in stripped if c and not _PUNCTUATION_ONLY_RE.fullmatch(c)]


def merge_short_sentences(sentences: list[str], min_length: int = 30) -> list[str]:
    """Glue sentences shorter than ``min_length`` characters onto a neighbour.

    A short sentence is appended to the previous kept sentence; when there is none yet it is
    prepended to the next one (which is then judged with the combined length).  A lone short
    trailing sentence is kept as is.  With ``min_length <= 0`` or fewer than two sentences the
    input is returned unchanged (as a new list).
    """
    if min_length <= 0 or len(sentences) < 2:
        return list(sentences)
    kept: list[str] = []
    carried = None  # short text waiting to be prepended to the next sentence
    for index, sentence in enumerate(sentences):
        if carried is not None:
            sentence = (carried + " " + sentence).strip()
            carried = None
        if len(sentence) >= min_length:
            kept.append(sentence)
        elif kept:
            kept[-1] = (kept[-1] + " " + sentence).strip()
        elif index + 1 < len(sentences):
            carried = sentence
        else:
            kept.append(sentence)
    return kept


def prepare_sentences(text: str, min_length: int = 30) -> list[str]:
    """The sentences (before prompt formatting) the reference would synthesise for ``text``."""
    return merge_short_sentences(split_sentences(clean_text(text.strip())), min_length)


def format_prompt(sentence: str) -> str:
    """Wrap one sentence in the control tokens the language model expects."""
    return f"[STOP][TEXT]{sentence}[START]"
