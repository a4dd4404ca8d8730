"""The form every normalization step takes: ``(pattern, replacement)`` rules applied in order.

Upstream's normalizer is a long chain of ``re.sub`` calls; keeping them as data, applied by one
loop, lets the steps live in separate modules while running exactly as upstream orders them.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Union

Replacement = Union[str, Callable[["re.Match[str]"], str]]
Rule = tuple["re.Pattern[str]", Replacement]


def run_rules(rules: Iterable[Rule], text: str) -> str:
    """Apply ``(pattern, replacement)`` rules one after another, each over the whole text."""
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text
