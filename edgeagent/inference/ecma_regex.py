"""JSON Schema `pattern`s (ECMA-262 regular expressions) checked with RE2.

The final re-validation of a caller's answer must not backtrack: Python's `re` (what
jsonschema uses) takes exponential time on patterns like `^(a+)+$`, and one such
pattern froze the event loop. RE2 runs in time linear in the input, but its syntax is
not ECMA-262's, so patterns are translated first:

* `\\uXXXX`, `\\u{X...}`, `\\xHH`, `\\cX` -> `\\x{...}`; `\\p{Letter}` and the other long
  General_Category names -> RE2's short ones (`\\p{L}`); `\\p{Script=Greek}` -> `\\p{Greek}`;
* `\\s`/`\\S` -> ECMA's whitespace set (RE2's `\\s` is ASCII only); `.` -> anything but
  ECMA's line terminators; `(?<name>` -> `(?P<name>`.

`\\d`, `\\w`, `\\b` are ASCII in both; `^`/`$` without flags match at the ends of the
text in both. What RE2 cannot do (look-around, back-references) raises
`UnsupportedPatternError`; text that is not an ECMA-262 pattern raises `InvalidPatternError`.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

# ECMA-262 WhiteSpace and LineTerminator code points, as the inside of an RE2 class.
_WHITESPACE = (
    r"\t-\r \x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}"
)
_NOT_LINE_TERMINATOR = r"[^\n\r\x{2028}\x{2029}]"
_SYNTAX_CHARACTERS = frozenset("^$\\.*+?()[]{}|/-")
_CONTROL_ESCAPES = {"n": r"\n", "r": r"\r", "t": r"\t", "v": r"\v", "f": r"\f"}
# Unicode General_Category long names (and aliases) -> the short names RE2 knows.
_CATEGORIES = {
    "Letter": "L", "Cased_Letter": "LC", "Uppercase_Letter": "Lu", "Lowercase_Letter": "Ll",
    "Titlecase_Letter": "Lt", "Modifier_Letter": "Lm", "Other_Letter": "Lo", "Mark": "M",
    "Combining_Mark": "M", "Nonspacing_Mark": "Mn", "Spacing_Mark": "Mc",
    "Enclosing_Mark": "Me", "Number": "N", "Decimal_Number": "Nd", "digit": "Nd",
    "Letter_Number": "Nl", "Other_Number": "No", "Punctuation": "P", "punct": "P",
    "Connector_Punctuation": "Pc", "Dash_Punctuation": "Pd", "Open_Punctuation": "Ps",
    "Close_Punctuation": "Pe", "Initial_Punctuation": "Pi", "Final_Punctuation": "Pf",
    "Other_Punctuation": "Po", "Symbol": "S", "Math_Symbol": "Sm", "Currency_Symbol": "Sc",
    "Modifier_Symbol": "Sk", "Other_Symbol": "So", "Separator": "Z", "Space_Separator": "Zs",
    "Line_Separator": "Zl", "Paragraph_Separator": "Zp", "Other": "C", "Control": "Cc",
    "cntrl": "Cc", "Format": "Cf", "Surrogate": "Cs", "Private_Use": "Co",
}  # fmt: skip
_PROPERTY_PREFIXES = ("General_Category=", "gc=", "Script=", "sc=", "Script_Extensions=", "scx=")


class InvalidPatternError(ValueError):
    """Not an ECMA-262 regular expression (the schema is invalid)."""


class UnsupportedPatternError(ValueError):
    """A valid ECMA-262 pattern that cannot be checked without backtracking."""


def _hex(text: str, start: int, length: int) -> int:
    digits = text[start : start + length]
    if len(digits) != length or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise InvalidPatternError(f"bad escape at {start - 2}")
    return int(digits, 16)


def _code_point(code: int) -> str:
    if 0xD800 <= code <= 0xDFFF:
        raise UnsupportedPatternError("a lone surrogate cannot be matched in UTF-8 text")
    if code > 0x10FFFF:
        raise InvalidPatternError("code point beyond U+10FFFF")
    return f"\\x{{{code:x}}}"


def _unicode_escape(pattern: str, i: int) -> tuple[str, int]:
    """`\\u...` at pattern[i] (the 'u'): (RE2 text, index after it)."""
    if pattern.startswith("{", i + 1):
        end = pattern.find("}", i + 2)
        if end < 0:
            raise InvalidPatternError(f"unterminated \\u{{ at {i - 1}")
        return _code_point(_hex(pattern, i + 2, end - i - 2)), end + 1
    code = _hex(pattern, i + 1, 4)
    after = i + 5
    if 0xD800 <= code <= 0xDBFF and pattern.startswith("\\u", after):
        low = _hex(pattern, after + 2, 4)
        if 0xDC00 <= low <= 0xDFFF:  # a surrogate pair is one code point
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            after += 6
    return _code_point(code), after


def _property(pattern: str, i: int) -> tuple[str, int]:
    """`\\p{...}`/`\\P{...}` at pattern[i] (the 'p' or 'P')."""
    if not pattern.startswith("{", i + 1):
        raise InvalidPatternError(f"\\{pattern[i]} needs {{name}} at {i - 1}")
    end = pattern.find("}", i + 2)
    if end < 0:
        raise InvalidPatternError(f"unterminated \\{pattern[i]}{{ at {i - 1}")
    name = pattern[i + 2 : end]
    for prefix in _PROPERTY_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return f"\\{pattern[i]}{{{_CATEGORIES.get(name, name)}}}", end + 1


def _escape(pattern: str, i: int, *, in_class: bool) -> tuple[str, int]:  # noqa: C901, PLR0911, PLR0912 - one case per ECMA escape, in the spec's order
    """The escape whose letter is pattern[i]: (RE2 text, index after it)."""
    if i >= len(pattern):
        raise InvalidPatternError("pattern ends with '\\'")
    char = pattern[i]
    if char in "dDwWbB":
        if in_class and char in "bB":
            return (r"\x{8}", i + 1) if char == "b" else _invalid(i)
        return f"\\{char}", i + 1
    if char == "s":
        return (_WHITESPACE if in_class else f"[{_WHITESPACE}]"), i + 1
    if char == "S":
        if in_class:
            raise UnsupportedPatternError("\\S inside a character class")
        return f"[^{_WHITESPACE}]", i + 1
    if char in _CONTROL_ESCAPES:
        return _CONTROL_ESCAPES[char], i + 1
    if char == "u":
        return _unicode_escape(pattern, i)
    if char == "x":
        return _code_point(_hex(pattern, i + 1, 2)), i + 3
    if char == "c":
        letter = pattern[i + 1 : i + 2]
        if not (letter.isascii() and letter.isalpha()):
            raise InvalidPatternError(f"\\c needs a letter at {i - 1}")
        return _code_point(ord(letter) % 32), i + 2
    if char in "pP":
        return _property(pattern, i)
    if char == "0" and not pattern[i + 1 : i + 2].isdigit():
        return r"\x{0}", i + 1
    if char.isdigit() or char == "k":
        raise UnsupportedPatternError("back-references")
    if char in _SYNTAX_CHARACTERS:
        return f"\\{char}", i + 1
    return _invalid(i)


def _invalid(i: int) -> tuple[str, int]:
    raise InvalidPatternError(f"invalid escape at {i - 1}")


def _class(pattern: str, i: int) -> tuple[str, int]:
    """The character class opening at pattern[i] ('['): (RE2 text, index after it)."""
    j = i + 1
    negated = pattern.startswith("^", j)
    j += negated
    if pattern.startswith("]", j):  # ECMA: [] matches nothing, [^] anything
        return (r"[\x{0}-\x{10ffff}]" if negated else r"[^\x{0}-\x{10ffff}]"), j + 1
    body: list[str] = []
    while j < len(pattern) and pattern[j] != "]":
        if pattern[j] == "\\":
            text, j = _escape(pattern, j + 1, in_class=True)
            body.append(text)
        else:
            body.append("\\[" if pattern[j] == "[" else pattern[j])
            j += 1
    if j >= len(pattern):
        raise InvalidPatternError(f"unterminated character class at {i}")
    return f"[{'^' if negated else ''}{''.join(body)}]", j + 1


def translate(pattern: str) -> str:
    """The RE2 pattern that matches what the ECMA-262 pattern matches."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            text, i = _escape(pattern, i + 1, in_class=False)
            out.append(text)
            continue
        if char == "[":
            text, i = _class(pattern, i)
            out.append(text)
            continue
        if char == "(":
            depth += 1
            if pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
                raise UnsupportedPatternError("look-around")
            if pattern.startswith("(?<", i):
                out.append("(?P<")
                i += 3
                continue
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise InvalidPatternError(f"unbalanced ')' at {i}")
        out.append(_NOT_LINE_TERMINATOR if char == "." else char)
        i += 1
    if depth:
        raise InvalidPatternError("unbalanced '('")
    return "".join(out)


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # errors become our exceptions, not lines on stderr
    return options


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """The compiled RE2 regex for an ECMA-262 pattern (cached; safe across threads)."""
    translated = translate(pattern)
    try:
        return re2.compile(translated, _options())
    except re2.error as exc:
        raise UnsupportedPatternError(str(exc)) from exc


def search(pattern: str, text: str) -> bool:
    """Whether the pattern matches somewhere in text (JSON Schema patterns are unanchored)."""
    return compile_pattern(pattern).search(text) is not None
