"""ECMA-262 patterns translated to RE2: same matches, no backtracking."""

from __future__ import annotations

import pytest

from edgeagent.inference.ecma_regex import (
    InvalidPatternError,
    UnsupportedPatternError,
    compile_pattern,
    search,
    translate,
)


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("a+", "xxaayy", True),  # unanchored, as JSON Schema says
        (r"^\p{Letter}+$", "Grüße", True),
        (r"^\p{L}+$", "a1", False),
        (r"^\P{Letter}$", "1", True),
        (r"^\p{General_Category=Decimal_Number}$", "٣", True),
        (r"^\p{Script=Greek}+$", "αβγ", True),
        (r"^\p{sc=Greek}$", "a", False),
        (r"^\u00e9$", "é", True),
        (r"^\u{1F600}$", "😀", True),
        (r"^\uD83D\uDE00$", "😀", True),  # a surrogate pair is one code point
        (r"^\x41$", "A", True),
        (r"^\cJ$", "\n", True),
        (r"^\0$", "\x00", True),
        (r"^\d+$", "١٢", False),  # ECMA \d is ASCII
        (r"^\w$", "é", False),  # ECMA \w is ASCII
        (r"^\s$", "\u00a0", True),  # ECMA \s is Unicode white space ...
        (r"^\s$", "\ufeff", True),  # ... and the BOM
        (r"^\S$", "\ufeff", False),
        (r"^[\s,]+$", " ,\u3000", True),
        (r"^.$", "\n", False),  # . excludes ECMA line terminators
        (r"^.$", "\u2028", False),
        (r"^.$", "😀", True),
        (r"^[^]$", "\n", True),  # [^] is anything
        (r"^[]$", "a", False),  # [] is nothing
        (r"^(?<year>\d{4})$", "2024", True),
        (r"^a\/b$", "a/b", True),
        (r"^[\b]$", "\x08", True),
        ("^abc$", "abc\n", False),  # $ is the very end, not before a final newline
        ("^(a+)+$", "a" * 3000 + "!", False),  # linear time, not exponential
        ("^(a|aa)*b$", "a" * 3000, False),
    ],
)
def test_matches_like_ecma_262(pattern, text, matches):
    assert search(pattern, text) is matches


@pytest.mark.parametrize("pattern", ["(?=a)", "(?!a)", "(?<=a)b", "(?<!a)b", r"(a)\1", r"\k<n>"])
def test_what_re2_cannot_do_is_unsupported(pattern):
    with pytest.raises(UnsupportedPatternError):
        compile_pattern(pattern)


@pytest.mark.parametrize(
    "pattern", ["[a", "(a", "a)", "\\", r"\q", r"\u12", r"\u{110000}", r"\p", r"\c1"]
)
def test_what_is_not_ecma_262_is_invalid(pattern):
    with pytest.raises(InvalidPatternError):
        translate(pattern)


def test_unknown_property_names_are_unsupported():
    with pytest.raises(UnsupportedPatternError):
        compile_pattern(r"\p{Emoji_Presentation}")
