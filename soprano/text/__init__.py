"""Text front end: raw user text -> the prompt strings the Soprano language model is fed.

The Soprano-1.1-80M checkpoint was trained on text produced by the reference implementation
(soprano-tts 0.2.0): lower-cased ASCII with numbers, symbols and common abbreviations spelled
out as words, cut into sentences of at most 300 characters, each wrapped as
``[STOP][TEXT]{sentence}[START]``. The model only behaves well on exactly that distribution, so
this package reproduces the reference pipeline *character for character*, oddities included
(``QUIRK`` comments). One deliberate difference: upstream fails on a run of more than 36
digits (inflect cannot name it), ours reads it digit by digit (``numerals.MAX_NUMBER_DIGITS``).
Do not "fix" a quirk without accepting that outputs will no longer match the reference
(``tests/test_text.py`` checks parity).

``prepare_sentences`` = ``normalize.clean_text`` (unicode, numbers via ``numerals``,
abbreviations, symbols, punctuation), then ``split.split_sentences`` (quote-aware, length-capped)
and ``split.merge_short_sentences``; ``format_prompt`` wraps one sentence for the model.

Out of scope: tokenisation (the model's tokenizer does that), which sentence belongs to which
input text, languages other than English, and any "smarter" normalisation than the reference's.
"""
from .normalize import clean_text
from .split import format_prompt, merge_short_sentences, prepare_sentences, split_sentences

__all__ = [
    "clean_text",
    "split_sentences",
    "merge_short_sentences",
    "prepare_sentences",
    "format_prompt",
]
