"""The pii-redact detectors: e-mail addresses, phone numbers and Luhn-checked card numbers.

Every pattern runs in time linear in the text (no nested quantifiers, matches only start at the
beginning of a run), so a hostile string costs the plugin what its length costs, no more.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Tuple

DETECTORS: Tuple[str, ...] = ("card", "email", "phone")
DEFAULT_REPLACEMENT = "[REDACTED]"
MAX_DEPTH = 256
MAX_REPLACEMENT = 100

# local@domain.tld; every quantifier is bounded, so each start position costs at most a constant.
EMAIL = re.compile(r"[A-Za-z0-9._%+'_-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![A-Za-z0-9-])")
# A run of digits, single spaces or dashes between them: a card candidate (checked by length and Luhn).
DIGIT_RUN = re.compile(r"(?<![\d])\d(?:[ -]?\d)*(?!\d)")
# +digits, or: an optional +country code, an optional (area), then 2-4 digit groups joined by one space, dash or dot.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{7,15}|(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){0,5})(?![\w:])")
IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
DATE = re.compile(r"^\d{4}[-.]\d{2}[-.]\d{2}\b")


class OptionsError(ValueError):
    """Bad options: the message names the field, the value and what was expected."""


@dataclass(frozen=True)
class Options:
    """Which detectors run and what replaces a match (``{detector}`` is replaced by its name)."""

    detectors: Tuple[str, ...] = DETECTORS
    replacement: str = DEFAULT_REPLACEMENT


def parse_options(value: Any, where: str = "options") -> Options:
    """Checks ``{"detectors"?: [...], "replacement"?: str}``; unknown keys are errors."""
    if value is None:
        return Options()
    if not isinstance(value, Mapping):
        raise OptionsError(f"expected `{where}` to be an object, got {value!r}")
    for key in value:
        if key not in ("detectors", "replacement"):
            raise OptionsError(f"expected `{where}.{key}` to be absent: the keys of `{where}` are detectors, replacement")
    detectors = value.get("detectors", list(DETECTORS))
    if not isinstance(detectors, list) or not detectors or any(d not in DETECTORS for d in detectors):
        raise OptionsError(f"expected `{where}.detectors` to be a non-empty list of {', '.join(DETECTORS)}, got {detectors!r}")
    replacement = value.get("replacement", DEFAULT_REPLACEMENT)
    if not isinstance(replacement, str) or len(replacement) > MAX_REPLACEMENT:
        raise OptionsError(f"expected `{where}.replacement` to be a string of at most {MAX_REPLACEMENT} characters, got {replacement!r}")
    return Options(tuple(d for d in DETECTORS if d in detectors), replacement)


def luhn(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def find_cards(text: str) -> List[Tuple[int, int]]:
    """Spans of 13-19 digits (spaces or dashes allowed between them) that pass Luhn.

    A longer run with separators (``4111 1111 1111 1111 42``) is split at its separators, and the
    longest run of whole groups that passes is taken; a run of 20+ digits without separators is an
    identifier, not a card.
    """
    spans: List[Tuple[int, int]] = []
    for m in DIGIT_RUN.finditer(text):
        groups = [(g.start() + m.start(), g.end() + m.start()) for g in re.finditer(r"\d+", m.group())]
        i = 0
        while i < len(groups):
            best, digits = -1, ""
            for j in range(i, len(groups)):  # at most 19 digits ahead: linear in the run
                digits += text[groups[j][0]:groups[j][1]]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn(digits):
                    best = j
            if best >= 0:
                spans.append((groups[i][0], groups[best][1]))
                i = best + 1
            else:
                i += 1
    return spans


def find_phones(text: str) -> List[Tuple[int, int]]:
    """Phone numbers: 7-15 digits with a leading ``+``, else 9-15 digits with separators or an
    ``(area)``. A bare digit run without ``+`` (an id, an amount), dotted quads (IPv4) and what
    starts like a date (``2026-01-31 12``) are not phones."""
    spans = []
    for m in PHONE.finditer(text):
        s = m.group()
        digits = sum(ch.isdigit() for ch in s)
        if s.startswith("+"):
            ok = 7 <= digits <= 15
        else:
            ok = 9 <= digits <= 15 and any(ch in " .-(" for ch in s) and not IPV4.match(s) and not DATE.match(s)
        if ok:
            spans.append(m.span())
    return spans


def find_emails(text: str) -> List[Tuple[int, int]]:
    return [m.span() for m in EMAIL.finditer(text)]


FINDERS: Dict[str, Callable[[str], List[Tuple[int, int]]]] = {"card": find_cards, "email": find_emails, "phone": find_phones}


def redact_text(text: str, options: Options = Options()) -> Tuple[str, int]:
    """Returns the text with every match replaced, and the number of matches.

    Detectors run in the order card, email, phone, each on what the previous ones left, so a card
    number is never half-taken for a phone number.
    """
    count = 0
    for name in options.detectors:
        spans = FINDERS[name](text)
        if not spans:
            continue
        replacement = options.replacement.replace("{detector}", name)
        parts, last = [], 0
        for start, end in spans:
            parts.append(text[last:start])
            parts.append(replacement)
            last = end
        parts.append(text[last:])
        text = "".join(parts)
        count += len(spans)
    return text, count


def redact(value: Any, options: Options = Options(), depth: int = 0) -> Tuple[Any, int]:
    """Redacts every string in a JSON value (object keys too), recursively; returns (value, matches).

    Keys that become equal after redaction get a `` #2``, `` #3``... suffix in document order, so no
    value is lost. Raises ValueError past MAX_DEPTH levels of nesting.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"expected data nested at most {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        return redact_text(value, options)
    if isinstance(value, list):
        out, total = [], 0
        for item in value:
            red, n = redact(item, options, depth + 1)
            out.append(red)
            total += n
        return out, total
    if isinstance(value, dict):
        obj: Dict[str, Any] = {}
        total = 0
        for key, item in value.items():
            new_key, n = redact_text(key, options)
            base, k = new_key, 1
            while new_key in obj:
                k += 1
                new_key = f"{base} #{k}"
            red, m = redact(item, options, depth + 1)
            obj[new_key] = red
            total += n + m
        return obj, total
    return value, 0
