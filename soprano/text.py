"""Text front end: raw user text -> the prompt strings the Soprano language model is fed.

Why this module exists
----------------------
The Soprano-1.1-80M checkpoint was trained on text produced by the reference implementation
(soprano-tts 0.2.0): lower-cased ASCII with numbers, symbols and common abbreviations spelled
out as words, cut into sentences of at most 300 characters, each wrapped as
``[STOP][TEXT]{sentence}[START]``.  The model only behaves well on exactly that distribution, so
this module reproduces the reference pipeline *character for character* -- including its
oddities, which are flagged with ``QUIRK`` comments below.  Do not "fix" a quirk here without
accepting that outputs will no longer match the reference (``tests/test_text.py`` checks parity).

Pipeline (``prepare_sentences``):

1. ``clean_text``: normalisation (unicode -> ASCII, numbers/currency/dates/times to words,
   abbreviations, symbols, case, punctuation clean-up).
2. ``split_sentences``: sentence splitting with a hard length cap (quote-aware).
3. ``merge_short_sentences``: sentences under ``min_length`` characters are glued to a neighbour.

``format_prompt`` wraps one sentence for the model.

Out of scope: tokenisation (the model's tokenizer does that), batching/bookkeeping of which
sentence belongs to which input text, languages other than English, and any kind of
"smarter" normalisation than the reference has.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Union

import inflect
from unidecode import unidecode

__all__ = [
    "clean_text",
    "split_sentences",
    "merge_short_sentences",
    "prepare_sentences",
    "format_prompt",
]

_Replacement = Union[str, Callable[["re.Match[str]"], str]]
_Rule = tuple["re.Pattern[str]", _Replacement]

_INFLECT = inflect.engine()


def _run_rules(rules: Iterable[_Rule], text: str) -> str:
    """Apply ``(pattern, replacement)`` rules one after another, each over the whole text."""
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


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

_ABBREVIATION_RULES: tuple[_Rule, ...] = tuple(
    [(re.compile(rf"\b{key}\.", re.IGNORECASE), words) for key, words in _DOTTED_ABBREVIATIONS]
    + [(re.compile(rf"\b{key}\b"), words) for key, words in _CASED_WORDS]
)


# ==================================================================================================
# Numbers
# ==================================================================================================

_MAGNITUDE_WORDS = {"K": "thousand", "M": "million", "B": "billion", "T": "trillion"}


def _hash_number(m: re.Match) -> str:
    # "#5" -> "number 5" (only the first digit is consumed by the pattern)
    return "number " + m.group(0)[1]


def _magnitude_suffix(m: re.Match) -> str:
    # "10k" -> "10 thousand"
    token = m.group(0)
    return f"{token[:-1]} {_MAGNITUDE_WORDS[token[-1].upper()]}"


def _space_digit_letter(m: re.Match) -> str:
    pair = m.group(1)
    return pair[0] + " " + pair[1]


def _drop_commas(m: re.Match) -> str:
    return m.group(1).replace(",", "")


def _date_with_dashes(m: re.Match) -> str:
    # "1/2/2025" -> "1 dash 2 dash 2025"; groups 1 and 3 are the (kept) surrounding characters.
    fields = re.split("[./-]", m.group(2))
    return m.group(1) + " dash ".join(fields) + m.group(3)


def _phone_digits(m: re.Match) -> str:
    # "(555) 123-4567" -> "5 5 5, 1 2 3, 4 5 6 7"
    digits = re.sub(r"\D", "", m.group(1))
    assert len(digits) == 10
    return ", ".join(" ".join(group) for group in (digits[:3], digits[3:6], digits[6:]))


def _oh_prefixed(field: str) -> str:
    """A minutes/seconds field with a leading zero is read "oh <field>"."""
    return f"oh {field}" if field.startswith("0") else field


def _clock_hh_mm(hours: str, minutes: str) -> str:
    if minutes == "00":
        if int(hours) == 0:
            return "0"
        if int(hours) > 12:
            return f"{hours} minutes"  # QUIRK: "13:00" reads "thirteen minutes"
        return f"{hours} o'clock"
    if minutes.startswith("0"):
        minutes = "oh " + minutes[1:]
    return f"{hours} {minutes}"


def _clock_hh_mm_ss(hours: str, minutes: str, seconds: str) -> str:
    if int(hours) != 0:
        if minutes == "00":
            said_minutes = "oh oh"
        elif minutes.startswith("0"):
            said_minutes = f"oh {minutes}"
        else:
            # QUIRK: the reference formats a one-element *set* here, so "01:15:30" becomes
            # "01 {'15'} 30" (later stages turn the braces into commas).
            said_minutes = f"{{'{minutes}'}}"
        said_seconds = "" if seconds == "00" else _oh_prefixed(seconds)
        return f"{hours} {said_minutes} {said_seconds}"
    if minutes != "00":
        said_seconds = "oh oh" if seconds == "00" else _oh_prefixed(seconds)
        return f"{minutes} {said_seconds}"
    return seconds


def _clock_time(m: re.Match) -> str:
    fields = m.group(1).split(":")
    if len(fields) == 2:
        return _clock_hh_mm(*fields)
    return _clock_hh_mm_ss(*fields)


def _with_unit(amount: int, singular: str) -> str:
    return f"{amount} {singular if amount == 1 else singular + 's'}"


def _dollar_amount(m: re.Match) -> str:
    amount = m.group(1)
    pieces = amount.split(".")
    if len(pieces) > 2:
        return amount + " dollars"
    dollars = int(pieces[0]) if pieces[0] else 0
    # QUIRK: cents are read literally, so "$1.5" is "1 dollar, 5 cents".
    cents = int(pieces[1]) if len(pieces) > 1 and pieces[1] else 0
    spoken = [_with_unit(dollars, "dollar")] if dollars else []
    if cents:
        spoken.append(_with_unit(cents, "cent"))
    return ", ".join(spoken) if spoken else "zero dollars"


def _decimal_digits(m: re.Match) -> str:
    # "3.14" -> "3 point 1 4"; "1.2.3" -> "1 point 2 point 3"
    whole, *fractions = m.group(1).split(".")
    return whole + " point " + " point ".join(" ".join(part) for part in fractions)


def _join_with(separator: str, word: str) -> Callable[[re.Match], str]:
    def expand(m: re.Match) -> str:
        return f" {word} ".join(m.group(1).split(separator))
    return expand


def _slash_run(m: re.Match) -> str:
    fields = m.group(1).split("/")
    return (" over " if len(fields) == 2 else " slash ").join(fields)


def _ordinal_words(m: re.Match) -> str:
    return _INFLECT.number_to_words(m.group(0), andword="")


def _cardinal_words(m: re.Match) -> str:
    value = int(m.group(0))
    if not 1000 < value < 3000:
        return _INFLECT.number_to_words(value, andword="")
    # Year-like numbers between 1001 and 2999.
    if value == 2000:
        return "two thousand"
    if 2000 < value < 2010:
        return "two thousand " + _INFLECT.number_to_words(value % 100)
    if value % 100 == 0:
        return _INFLECT.number_to_words(value // 100) + " hundred"
    paired = _INFLECT.number_to_words(value, andword="", zero="oh", group=2)
    return paired.replace(", ", " ")


_DIGIT_LETTER_RULE: _Rule = (re.compile(r"(\d[a-z]|[a-z]\d)", re.IGNORECASE), _space_digit_letter)

# Applied strictly in this order; every rule sees the output of the previous one.
_NUMBER_RULES: tuple[_Rule, ...] = (
    (re.compile(r"#\d"), _hash_number),
    (re.compile(r"\b\d+(K|M|B|T)\b", re.IGNORECASE), _magnitude_suffix),
    (re.compile(r"(\d[\d\,]+\d)"), _drop_commas),
    (re.compile(r"(^|[^/])(\d\d?[/-]\d\d?[/-]\d\d(?:\d\d)?)($|[^/])"), _date_with_dashes),
    (re.compile(r"(\(?\d{3}\)?[-.\s]\d{3}[-.\s]?\d{4})"), _phone_digits),
    (re.compile(r"(\d\d?:\d\d(?::\d\d)?)"), _clock_time),
    # QUIRK: never fires, unidecode has already turned "£" into "PS" ("£20" -> "ps twenty").
    (re.compile(r"£([\d\,]*\d+)"), r"\1 pounds"),
    (re.compile(r"\$([\d\.\,]*\d+)"), _dollar_amount),
    (re.compile(r"(\d+(?:\.\d+)+)"), _decimal_digits),
    (re.compile(r"(\d\s?\*\s?\d)"), _join_with("*", "times")),
    (re.compile(r"(\d\s?/\s?\d)"), _join_with("/", "over")),
    (re.compile(r"(\d\s?\+\s?\d)"), _join_with("+", "plus")),
    (re.compile(r"(\d?\s?-\s?\d)"), _join_with("-", "minus")),  # also catches negative numbers
    (re.compile(r"(\d+(?:/\d+)+)"), _slash_run),
    (re.compile(r"\d+(st|nd|rd|th)"), _ordinal_words),
    # One pass cannot split overlapping pairs such as "a1b", hence the rule appears twice.
    _DIGIT_LETTER_RULE,
    _DIGIT_LETTER_RULE,
    (re.compile(r"\d+"), _cardinal_words),
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


_STRUCTURE_RULES: tuple[_Rule, ...] = (
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


_CAMEL_CASE_RULE: _Rule = (re.compile(r"\b([A-Z][a-z]*)+\b"), _split_camel_case)

_SYMBOL_RULES: tuple[_Rule, ...] = tuple((re.compile(pattern), words) for pattern, words in (
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
_EM_DASH_RULE: _Rule = (re.compile("—"), " - ")


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


_CHARSET_RULES: tuple[_Rule, ...] = (
    # keep letters, space, digits and ! $ % & ' * + , - . / < > ? _ (tabs etc. are dropped)
    (re.compile(r"[^A-Za-z !\$%&'\*\+,-./0123456789<>\?_]"), ""),
    (re.compile(r"[<>/_+]"), ""),
)

_WHITESPACE_RULES: tuple[_Rule, ...] = (
    (re.compile(r"\s+"), " "),
    (re.compile(r" [.\?!,]"), lambda m: m.group(0)[1]),  # no space before punctuation
)

_ELLIPSIS_PLACEHOLDER = "[ELLIPSIS]"
_PUNCTUATION_RULES: tuple[_Rule, ...] = (
    (re.compile(r"\.\.\.+"), _ELLIPSIS_PLACEHOLDER),
    (re.compile(r",+"), ","),
    (re.compile(r"[\.,]*\.[\.,]*"), "."),
    (re.compile(r"[\.,!]*![\.,!]*"), "!"),
    (re.compile(r"[\.,!\?]*\?[\.,!\?]*"), "?"),
    (re.compile(re.escape(_ELLIPSIS_PLACEHOLDER)), "..."),
)

_TRIPLE_LETTER_RULE: _Rule = (re.compile(r"(\w)\1{2,}"), lambda m: m.group(0)[:2])


# ==================================================================================================
# Public API
# ==================================================================================================

def clean_text(text: str) -> str:
    """Normalise arbitrary text into the lower-case ASCII form the model was trained on."""
    text = _run_rules([_EM_DASH_RULE], text)
    text = unidecode(text)
    text = _end_lines_with_punctuation(text)
    text = _run_rules(_NUMBER_RULES, text)
    text = _run_rules(_STRUCTURE_RULES, text)
    text = _run_rules(_ABBREVIATION_RULES, text)
    text = _run_rules([_CAMEL_CASE_RULE], text)
    text = _run_rules(_SYMBOL_RULES, text)
    text = text.lower()
    text = _run_rules(_CHARSET_RULES, text)
    text = _run_rules(_WHITESPACE_RULES, text).strip()
    text = _run_rules(_PUNCTUATION_RULES, text)
    return _run_rules([_TRIPLE_LETTER_RULE], text)


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
