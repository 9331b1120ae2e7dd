"""Expected values in eval cases: literals, and a few matchers for what is not exact.

An expected value is matched against what the model produced:

* a number matches an equal number (``20`` matches ``20.0``; ``true`` is not a number);
* a string, ``true``/``false`` or ``null`` matches itself exactly;
* an object matches an object that has every listed key with a matching value; keys
  not listed are not checked (a partial match: ``{"zone": 3}`` ignores ``minutes``);
* a list matches a list of the same length, item by item;
* an object whose keys start with ``$`` is a matcher:

  ============================== ==================================================
  ``{"$approx": 20, "$tol": 2}`` a number within ±2 (``"$rel": 0.1`` for ±10 %)
  ``{"$range": [15, 30]}``       a number from 15 to 30 inclusive
  ``{"$one_of": [30, 45]}``      any of the listed expected values (each may be a
                                 matcher); for a genuinely ambiguous value
  ``{"$contains": "frost"}``     a string containing it, case-insensitively; a list
                                 means any of them (``["frost", "gel", "霜"]``)
  ``{"$regex": "^pump"}``        a string the regular expression finds a match in
                                 (ECMA-262 syntax, as a schema's ``pattern``; at most
                                 256 characters)
  ``{"$any": true}``             any value, as long as the key is there
  ============================== ==================================================

Matching returns the list of mismatches (empty when it matches), each a short text
naming where and why, so a report can say ``args.minutes: expected 60, got 1``.

``$regex`` runs on RE2 (``inference.ecma_regex``, the engine of schemas' ``pattern``), in
time linear in the text: a case file or a model's answer can never make a backtracking
engine take exponential time (``(a+)+$`` against 26 characters took 3.4 s with ``re``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from edgeagent.inference import ecma_regex

# The keys a matcher object may have, and which of them is the main one.
_MAIN_KEYS = frozenset({"$approx", "$range", "$one_of", "$contains", "$regex", "$any"})
_EXTRA_KEYS = {"$approx": frozenset({"$tol", "$rel"})}
# Longest `$regex`, in characters: the default of schemas' `max_pattern_length`.
REGEX_MAX_CHARS = 256


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python, but true is not 1 in an answer.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def check_expected(expected: Any, where: str = "") -> None:
    """Raise ValueError if `expected` is not a well-formed expected value.

    Called when cases are loaded, so a typo such as ``$aprox`` is reported with the
    case's line instead of silently never matching.
    """
    if isinstance(expected, list):
        for index, item in enumerate(expected):
            check_expected(item, f"{where}[{index}]")
        return
    if not isinstance(expected, dict):
        return
    dollar = [k for k in expected if k.startswith("$")]
    if not dollar:
        for key, value in expected.items():
            check_expected(value, f"{where}.{key}" if where else key)
        return
    _check_matcher(expected, dollar, where or "(value)")


def _check_matcher(expected: dict[str, Any], dollar: list[str], where: str) -> None:
    if len(dollar) != len(expected):
        raise ValueError(f"{where}: a matcher object has only $-keys, got {sorted(expected)}")
    main = [k for k in dollar if k in _MAIN_KEYS]
    if len(main) != 1:
        raise ValueError(f"{where}: needs exactly one of {sorted(_MAIN_KEYS)}, got {dollar}")
    key = main[0]
    unknown = set(dollar) - {key} - _EXTRA_KEYS.get(key, frozenset())
    if unknown:
        raise ValueError(f"{where}: {sorted(unknown)} not allowed with {key}")
    problem = _CHECKS[key](expected)
    if problem:
        raise ValueError(f"{where}: {problem}")


def _check_approx(expected: dict[str, Any]) -> str | None:
    numbers = [expected["$approx"], expected.get("$tol", 0), expected.get("$rel", 0)]
    if not all(_is_number(n) for n in numbers) or min(numbers[1:]) < 0:
        return "$approx, $tol and $rel must be numbers (tolerances >= 0)"
    return None


def _check_range(expected: dict[str, Any]) -> str | None:
    value = expected["$range"]
    if not (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))):
        return "$range must be [low, high]"
    return "$range low is above high" if value[0] > value[1] else None


def _check_one_of(expected: dict[str, Any]) -> str | None:
    value = expected["$one_of"]
    if not isinstance(value, list) or not value:
        return "$one_of must be a non-empty list"
    check_expected(value, "$one_of")
    return None


def _check_contains(expected: dict[str, Any]) -> str | None:
    value = expected["$contains"]
    texts = value if isinstance(value, list) else [value]
    if not texts or not all(isinstance(t, str) and t for t in texts):
        return "$contains must be a text or a list of texts"
    return None


def _check_regex(expected: dict[str, Any]) -> str | None:
    pattern = expected["$regex"]
    if not isinstance(pattern, str):
        return "$regex is not a regular expression: it must be a text"
    if len(pattern) > REGEX_MAX_CHARS:
        return f"$regex is {len(pattern)} characters long, the limit is {REGEX_MAX_CHARS}"
    try:
        ecma_regex.compile_pattern(pattern)
    except ecma_regex.InvalidPatternError as exc:
        return f"$regex is not a regular expression: {exc}"
    except ecma_regex.UnsupportedPatternError as exc:
        return f"$regex needs backtracking (look-around, back-references), unsupported: {exc}"
    return None


def _check_any(expected: dict[str, Any]) -> str | None:
    return None if expected["$any"] is True else 'write {"$any": true}'


_CHECKS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "$approx": _check_approx,
    "$range": _check_range,
    "$one_of": _check_one_of,
    "$contains": _check_contains,
    "$regex": _check_regex,
    "$any": _check_any,
}


def match(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Mismatches between an expected value and an actual one; [] means it matches."""
    label = where or "(value)"
    if isinstance(expected, dict):
        if any(k.startswith("$") for k in expected):
            key = next(k for k in expected if k in _MAIN_KEYS)
            problem = _MATCHERS[key](expected, actual)
            return [f"{label}: {problem}"] if problem else []
        return _match_object(expected, actual, where)
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{label}: expected {len(expected)} items, got {_show(actual)}"]
        return [p for i, (e, a) in enumerate(zip(expected, actual, strict=True))
                for p in match(e, a, f"{label}[{i}]")]  # fmt: skip
    if _same_scalar(expected, actual):
        return []
    return [f"{label}: expected {_show(expected)}, got {_show(actual)}"]


def _same_scalar(expected: Any, actual: Any) -> bool:
    if _is_number(expected):
        return _is_number(actual) and math.isclose(expected, actual, rel_tol=0, abs_tol=1e-9)
    return type(expected) is type(actual) and bool(expected == actual)


def _match_object(expected: dict[str, Any], actual: Any, where: str) -> list[str]:
    if not isinstance(actual, dict):
        return [f"{where or '(value)'}: expected an object, got {_show(actual)}"]
    problems: list[str] = []
    for key, value in expected.items():
        path = f"{where}.{key}" if where else key
        if key not in actual:
            problems.append(f"{path}: missing")
        else:
            problems.extend(match(value, actual[key], path))
    return problems


# Each matcher returns None when the actual value matches, else why not.


def _match_any(_expected: dict[str, Any], _actual: Any) -> str | None:
    return None


def _match_one_of(expected: dict[str, Any], actual: Any) -> str | None:
    options = expected["$one_of"]
    if any(not match(option, actual) for option in options):
        return None
    return f"expected one of {_show(options)}, got {_show(actual)}"


def _match_approx(expected: dict[str, Any], actual: Any) -> str | None:
    target = expected["$approx"]
    tol = max(expected.get("$tol", 0), expected.get("$rel", 0) * abs(target), 1e-9)
    if _is_number(actual) and abs(actual - target) <= tol:
        return None
    return f"expected {target} ± {tol:g}, got {_show(actual)}"


def _match_range(expected: dict[str, Any], actual: Any) -> str | None:
    low, high = expected["$range"]
    if _is_number(actual) and low <= actual <= high:
        return None
    return f"expected {low}..{high}, got {_show(actual)}"


def _match_contains(expected: dict[str, Any], actual: Any) -> str | None:
    wanted = expected["$contains"]
    texts = wanted if isinstance(wanted, list) else [wanted]
    if isinstance(actual, str) and any(t.casefold() in actual.casefold() for t in texts):
        return None
    return f"expected text containing {_show(wanted)}, got {_show(actual)}"


def _match_regex(expected: dict[str, Any], actual: Any) -> str | None:
    pattern = expected["$regex"]
    if isinstance(actual, str) and ecma_regex.search(pattern, actual):
        return None
    return f"expected text matching /{pattern}/, got {_show(actual)}"


_MATCHERS: dict[str, Callable[[dict[str, Any], Any], str | None]] = {
    "$approx": _match_approx,
    "$range": _match_range,
    "$one_of": _match_one_of,
    "$contains": _match_contains,
    "$regex": _match_regex,
    "$any": _match_any,
}
