"""Whether an action's numeric arguments are supported by the input.

A number the model writes into an action's arguments should come from somewhere: the
input (in digits or in words, in the languages the eval covers: en, de, fr, es, it,
zh), a unit conversion of it (an hour = 60 minutes, half an hour = 30, a quarter =
25 %), or the action's own examples. A number from none of them is *unsupported*: the
model made it up (or an injected command pushed it, like "for 999 minutes" answered
99). The gate holds such an action (docs/protocol.md, `unsupported_argument`).

0 is always supported: it is how every catalog says "off" or "stop" ("switch off the
fan" is speed 0), and it is the value that does least.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from edgeagent.config import ActionConfig

_DIGITS = re.compile(r"\d+(?:[.,]\d+)?")
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")  # hyphenated: twenty-five
# Units and fractions the prompt asks the model to convert (contract._NUMBERS).
_CONVERSIONS = (60.0, 100.0, 1000.0, 3600.0, 24.0)

_UNITS = {
    "en": "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty",
    "de": "null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn "
    "vierzehn fünfzehn sechzehn siebzehn achtzehn neunzehn zwanzig",
    "fr": "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize "
    "quatorze quinze seize dix-sept dix-huit dix-neuf vingt",
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece "
    "catorce quince dieciséis diecisiete dieciocho diecinueve veinte",
    "it": "zero uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici "
    "quattordici quindici sedici diciassette diciotto diciannove venti",
}
_TENS = {
    "en": "thirty forty fifty sixty seventy eighty ninety",
    "de": "dreißig vierzig fünfzig sechzig siebzig achtzig neunzig",
    "fr": "trente quarante cinquante soixante soixante-dix quatre-vingt quatre-vingt-dix",
    "es": "treinta cuarenta cincuenta sesenta setenta ochenta noventa",
    "it": "trenta quaranta cinquanta sessanta settanta ottanta novanta",
}
# Words that stand for a number or a unit the model converts into one.
_SPECIAL = {
    **dict.fromkeys(
        [
            "half",
            "halfway",
            "moitié",
            "mitad",
            "metà",
            "halb",
            "halbe",
            "halben",
            "demi",
            "demie",
            "media",
            "medio",
            "mezza",
            "mezzo",
        ],
        0.5,
    ),
    **dict.fromkeys(["quarter", "viertel", "quart", "cuarto", "quarto"], 0.25),
    **dict.fromkeys(
        ["hour", "hours", "stunde", "stunden", "heure", "heures", "hora", "horas", "ora", "ore"],
        60.0,
    ),
    **dict.fromkeys(
        [
            "full",
            "fully",
            "completely",
            "ganz",
            "complètement",
            "completamente",
            "totalmente",
            "max",
            "maximum",
            "voll",
            "fond",
            "máximo",
            "massimo",
            "hundred",
            "hundert",
            "cent",
            "cien",
            "cento",
        ],
        100.0,
    ),
    **dict.fromkeys(["dozen", "dutzend", "douzaine", "docena", "dozzina"], 12.0),
    **dict.fromkeys(["thousand", "tausend", "mille", "mil"], 1000.0),
}
_ZH_DIGITS = {
    "零": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_ZH_WORDS = {"半": 0.5, "小时": 60.0, "刻": 15.0, "全": 100.0, "百": 100.0}
_ZH_NUMBER = re.compile("[零一二两三四五六七八九十百]+")


def _word_table() -> dict[str, float]:
    table = dict(_SPECIAL)
    for words in _UNITS.values():
        for value, word in enumerate(words.split()):
            table.setdefault(word, float(value))
    for words in _TENS.values():
        for index, word in enumerate(words.split()):
            table.setdefault(word, float(30 + 10 * index))
    return table


_WORDS = _word_table()


def _chinese(text: str) -> float:
    """A Chinese numeral below 1000 (二十 = 20, 十五 = 15, 三百零五 = 305)."""
    total, current = 0, 0
    for char in text:
        if char == "百":
            total += (current or 1) * 100
            current = 0
        elif char == "十":
            total += (current or 1) * 10
            current = 0
        else:
            current = _ZH_DIGITS[char]
    return float(total + current)


def numbers_in(text: str) -> set[float]:
    """Every number the text states, in digits or in words (and unit words)."""
    found = {float(m.group().replace(",", ".")) for m in _DIGITS.finditer(text)}
    lowered = text.lower()
    for match in _WORD.finditer(lowered):
        word = match.group()
        if word in _WORDS:
            found.add(_WORDS[word])
            continue
        # Compounds (twenty-five, vingt-deux, dreiundzwanzig): each part, and their sum.
        parts = [_WORDS[p] for p in re.split(r"-|und", word) if p in _WORDS]
        found.update(parts)
        if len(parts) > 1:
            found.add(sum(parts))
    found.update(_chinese(m.group()) for m in _ZH_NUMBER.finditer(text))
    found.update(v for word, v in _ZH_WORDS.items() if word in text)
    return found


def _numbers(value: Any) -> Iterator[float]:
    """The numbers of a JSON value (booleans are not numbers)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, str):
        return


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def _supported(value: float, known: set[float]) -> bool:
    if value == 0.0:
        return True
    candidates: Iterable[float] = known
    for number in candidates:
        if _close(value, number):
            return True
        for factor in _CONVERSIONS:
            if _close(value, number * factor) or _close(value, number / factor):
                return True
    pairs = [a * b for a in known for b in known]
    return any(_close(value, p) for p in pairs)


def unsupported_arguments(action: ActionConfig, args: Any, content: str) -> list[float]:
    """The numbers in `args` that neither `content` nor the action's examples support."""
    known = numbers_in(content)
    for text, given in action.example_texts():
        known |= numbers_in(text)
        known.update(_numbers(given))
    return [v for v in _numbers(args) if not _supported(v, known)]


def content_text(content: Any) -> str:
    """The caller's text of a task: the input, or every message's content."""
    if isinstance(content, str):
        return content
    return "\n".join(str(m.get("content", "")) for m in content if isinstance(m, dict))
