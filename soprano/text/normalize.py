"""Normalization: raw text -> the lower-case ASCII, words-only form the model was trained on.

Upstream's normalizer reproduced rule for rule: unicode to ASCII, numbers (``numerals``),
links, brackets, abbreviations, CamelCase, symbols, then case and punctuation clean-up. Each
step is a rule list applied in upstream's order; ``QUIRK`` comments mark upstream oddities that
are kept on purpose, since the model only behaves well on the text upstream feeds it.
"""
from __future__ import annotations

import re

from unidecode import unidecode

from .numerals import NUMBER_RULES
from .rules import Rule, run_rules

# ==================================================================================================
# Abbreviations
# ==================================================================================================

# "<abbr>." at a word start, any case.  Order matters where one key is a prefix of another.
_DOTTED_ABBREVIATIONS = (
    ("mrs", "misess"), ("ms", "miss"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"),
    ("co", "company"), ("jr", "junior"), ("maj", "major"), ("gen", "general"),
    ("drs", "doctors"), ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"),
    ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"),
    ("col", "colonel"), ("ft", "fort"),
)

# Whole words, case-sensitive.  Plural forms are listed before their singular.
_CASED_WORDS = (
    ("Hz", "hertz"), ("kHz", "kilohertz"),
    ("KBs", "kilobytes"), ("KB", "kilobyte"), ("MBs", "megabytes"), ("MB", "megabyte"),
    ("GBs", "gigabytes"), ("GB", "gigabyte"), ("TBs", "terabytes"), ("TB", "terabyte"),
    ("APIs", "a p i's"), ("API", "a p i"), ("CLIs", "c l i's"), ("CLI", "c l i"),
    ("CPUs", "c p u's"), ("CPU", "c p u"), ("GPUs", "g p u's"), ("GPU", "g p u"),
    ("Ave", "avenue"), ("etc", "et cetera"),
    ("Mon", "monday"), ("Tues", "tuesday"), ("Wed", "wednesday"), ("Thurs", "thursday"),
    ("Fri", "friday"), ("Sat", "saturday"),
    ("Jan", "january"), ("Feb", "february"), ("Mar", "march"), ("Apr", "april"),
    ("Aug", "august"), ("Sept", "september"), ("Oct", "october"), ("Nov", "november"),
    ("Dec", "december"),
    ("and/or", "and or"),
)

_ABBREVIATION_RULES: tuple[Rule, ...] = tuple(
    [(re.compile(rf"\b{key}\.", re.IGNORECASE), words) for key, words in _DOTTED_ABBREVIATIONS]
    + [(re.compile(rf"\b{key}\b"), words) for key, words in _CASED_WORDS]
)


# ==================================================================================================
# Symbols, links, brackets, CamelCase
# ==================================================================================================

def _dash_to_comma(m: re.Match) -> str:
    # "a - b" -> "a, b"
    span = m.group(0)
    return f"{span[0]}, {span[4]}"


def _letter_dot_letter(m: re.Match) -> str:
    span = m.group(0)
    return f"{span[0]} dot {span[2]}"


def _brackets_to_commas(m: re.Match) -> str:
    span = re.sub(r"[\(\[\{]", ", ", m.group(0))
    span = re.sub(r"[\)\]\}][^$.!?,]", ", ", span)
    return re.sub(r"[\)\]\}]", "", span)


_STRUCTURE_RULES: tuple[Rule, ...] = (
    (re.compile(r"(https?://)"), "h t t p s colon slash slash "),  # QUIRK: "http" too
    (re.compile(r"(. - .)"), _dash_to_comma),
    (re.compile(r"([A-Z]\.[A-Z])", re.IGNORECASE), _letter_dot_letter),
    (re.compile(r"[\(\[\{].*[\)\]\}](.|$)"), _brackets_to_commas),
)


def _split_camel_case(m: re.Match) -> str:
    word = m.group(0)
    parts = re.findall("[A-Z][a-z]*", word)
    if len(parts) == 1 or len(parts) == len(word):
        return word  # "Hello" or "NASA"
    if len(parts) == len(word) - 1 and word[-1] == "s":
        return word[:-1] + "'s"  # "TPUs" -> "TPU's"
    return " ".join(parts)  # "LMDeploy" -> "L M Deploy"


_CAMEL_CASE_RULE: Rule = (re.compile(r"\b([A-Z][a-z]*)+\b"), _split_camel_case)

_SYMBOL_RULES: tuple[Rule, ...] = tuple((re.compile(pattern), words) for pattern, words in (
    ("@", " at "),
    ("&", " and "),
    ("%", " percent "),
    (":", "."),
    (";", ","),
    (r"\+", " plus "),
    (r"\\", " backslash "),
    ("~", " about "),
    ("(^| )<3", " heart "),
    ("<=", " less than or equal to "),
    (">=", " greater than or equal to "),
    ("<", " less than "),
    (">", " greater than "),
    ("=", " equals "),
    ("/", " slash "),
    ("_", " "),
    (r"\*", " "),
))

# Em dashes must become spaced hyphens before unidecode would turn them into "--".
_EM_DASH_RULE: Rule = (re.compile("—"), " - ")


# ==================================================================================================
# Final character/punctuation clean-up
# ==================================================================================================

def _end_lines_with_punctuation(text: str) -> str:
    """Strip every line, give non-empty lines a terminal '.', then join the lines with spaces.

    QUIRK: this also applies to single-line input, so "Hello" becomes "Hello.".
    """
    lines = [line.strip() for line in text.split("\n")]
    return " ".join(line if not line or line[-1] in ".!?" else line + "."
                    for line in lines)


_CHARSET_RULES: tuple[Rule, ...] = (
    # keep letters, space, digits and ! $ % & ' * + , - . / < > ? _ (tabs etc. are dropped)
    (re.compile(r"[^A-Za-z !\$%&'\*\+,-./0123456789<>\?_]"), ""),
    (re.compile(r"[<>/_+]"), ""),
)

_WHITESPACE_RULES: tuple[Rule, ...] = (
    (re.compile(r"\s+"), " "),
    (re.compile(r" [.\?!,]"), lambda m: m.group(0)[1]),  # no space before punctuation
)

_ELLIPSIS_PLACEHOLDER = "[ELLIPSIS]"
_PUNCTUATION_RULES: tuple[Rule, ...] = (
    (re.compile(r"\.\.\.+"), _ELLIPSIS_PLACEHOLDER),
    (re.compile(r",+"), ","),
    (re.compile(r"[\.,]*\.[\.,]*"), "."),
    (re.compile(r"[\.,!]*![\.,!]*"), "!"),
    (re.compile(r"[\.,!\?]*\?[\.,!\?]*"), "?"),
    (re.compile(re.escape(_ELLIPSIS_PLACEHOLDER)), "..."),
)

_TRIPLE_LETTER_RULE: Rule = (re.compile(r"(\w)\1{2,}"), lambda m: m.group(0)[:2])


# ==================================================================================================
# The normalizer
# ==================================================================================================

def clean_text(text: str) -> str:
    """Normalise arbitrary text into the lower-case ASCII form the model was trained on."""
    text = run_rules([_EM_DASH_RULE], text)
    text = unidecode(text)
    text = _end_lines_with_punctuation(text)
    text = run_rules(NUMBER_RULES, text)
    text = run_rules(_STRUCTURE_RULES, text)
    text = run_rules(_ABBREVIATION_RULES, text)
    text = run_rules([_CAMEL_CASE_RULE], text)
    text = run_rules(_SYMBOL_RULES, text)
    text = text.lower()
    text = run_rules(_CHARSET_RULES, text)
    text = run_rules(_WHITESPACE_RULES, text).strip()
    text = run_rules(_PUNCTUATION_RULES, text)
    return run_rules([_TRIPLE_LETTER_RULE], text)
