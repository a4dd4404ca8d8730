"""Numbers as the reference reads them: amounts, dates, times, phone numbers, ordinals, years.

Split from ``normalize`` because numbers are most of the normalizer and the part with the most
quirks; ``NUMBER_RULES`` is one step of ``clean_text`` and must stay in upstream's order (each
rule sees the previous one's output). ``QUIRK`` marks behaviour kept for parity, not by design.
"""
from __future__ import annotations

import functools
import re
from typing import Callable

from .rules import Rule


@functools.cache
def _inflect():
    """inflect's engine, made on the first number: importing inflect takes ~2 s (typeguard
    instruments it), which a text without digits, and a process's start, should not pay."""
    import inflect
    return inflect.engine()

_MAGNITUDE_WORDS = {"K": "thousand", "M": "million", "B": "billion", "T": "trillion"}

# inflect names numbers below 10**36 ("decillion" is its largest group) and raises
# NumOutOfRangeError above; int() refuses strings over 4300 digits. Upstream lets both errors
# fail the whole text. A longer run (an ID, a hash, a card number) is read digit by digit here,
# as upstream reads decimals ("point one four"); shorter runs are read exactly as upstream does.
MAX_NUMBER_DIGITS = 36
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _too_long(digits: str) -> bool:
    """More digits than a number inflect can name (leading zeros do not count, as for int)."""
    return len(digits.lstrip("0")) > MAX_NUMBER_DIGITS


def _digit_by_digit(digits: str) -> str:
    return " ".join(_DIGIT_WORDS[int(d)] for d in digits)


def _amount(digits: str) -> int | str:
    """``int(digits)``, or ``digits`` itself (non-zero, not 1) when it is too long to be one."""
    return digits if _too_long(digits) else int(digits)


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
    dollars = _amount(pieces[0]) if pieces[0] else 0
    # QUIRK: cents are read literally, so "$1.5" is "1 dollar, 5 cents".
    cents = _amount(pieces[1]) if len(pieces) > 1 and pieces[1] else 0
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
    digits = m.group(0)[:-2]
    if _too_long(digits):  # "...67th" -> "... six seventh"
        return f"{_digit_by_digit(digits[:-1])} {_inflect().ordinal(_DIGIT_WORDS[int(digits[-1])])}"
    return _inflect().number_to_words(m.group(0), andword="")


def _cardinal_words(m: re.Match) -> str:
    if _too_long(m.group(0)):
        return _digit_by_digit(m.group(0))
    value = int(m.group(0))
    if not 1000 < value < 3000:
        return _inflect().number_to_words(value, andword="")
    # Year-like numbers between 1001 and 2999.
    if value == 2000:
        return "two thousand"
    if 2000 < value < 2010:
        return "two thousand " + _inflect().number_to_words(value % 100)
    if value % 100 == 0:
        return _inflect().number_to_words(value // 100) + " hundred"
    paired = _inflect().number_to_words(value, andword="", zero="oh", group=2)
    return paired.replace(", ", " ")


_DIGIT_LETTER_RULE: Rule = (re.compile(r"(\d[a-z]|[a-z]\d)", re.IGNORECASE), _space_digit_letter)

# Applied strictly in this order; every rule sees the output of the previous one.
NUMBER_RULES: tuple[Rule, ...] = (
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
