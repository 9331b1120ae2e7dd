"""RepetitionGuard on its own: which choices it removes, and when it leaves the mask alone."""

from __future__ import annotations

import numpy as np

from edgeagent.inference.repetition import MAX_FRACTION, MIN_REPEATS, RepetitionGuard

# A toy vocabulary: id -> text.
VOCAB = ['"', "a", "b", ".", "1", "0", ",", "}", "Day", " ", "2"]
ID = {text: i for i, text in enumerate(VOCAB)}
DIGITS = np.array([t.isdigit() for t in VOCAB], dtype=np.bool_)
ALL = np.ones(len(VOCAB), dtype=np.bool_)


def feed(guard: RepetitionGuard, *texts: str) -> None:
    for text in texts:
        guard.add([ID[text]], text)


def test_runaway_number_bans_digits_outside_strings():
    guard = RepetitionGuard(DIGITS)
    feed(guard, "1", "0", "0", ".")
    feed(guard, *["0"] * MAX_FRACTION)
    assert guard.refuses(ID["0"])
    assert not guard.refuses(ID[","])
    narrowed = guard.narrow(ALL)
    assert not narrowed[DIGITS].any()
    assert narrowed[ID["}"]]


def test_short_numbers_are_left_alone():
    guard = RepetitionGuard(DIGITS)
    feed(guard, "1", ".", "2", "0", "0")
    assert not guard.refuses(ID["0"])
    assert guard.narrow(ALL) is ALL


def test_cycle_inside_a_string_is_broken():
    guard = RepetitionGuard(DIGITS)
    feed(guard, '"', "Day", " ", "2")
    for _ in range(MIN_REPEATS):
        feed(guard, ".", "1")
    assert guard.refuses(ID["."])  # would start the next ".1"
    assert not guard.refuses(ID['"'])
    assert not guard.narrow(ALL)[ID["."]]


def test_cycles_outside_strings_are_data():
    guard = RepetitionGuard(DIGITS)
    for _ in range(MIN_REPEATS + 2):
        feed(guard, "0", ",")  # an array of zeros
    assert not guard.refuses(ID["0"])


def test_escaped_quotes_do_not_end_the_string():
    guard = RepetitionGuard(DIGITS)
    guard.add([ID['"']], '"')
    guard.add([ID["a"]], 'x\\"y')  # an escaped quote inside the string
    for _ in range(MIN_REPEATS):
        feed(guard, "a", "b")
    assert guard.refuses(ID["a"])


def test_nothing_is_removed_when_it_would_leave_no_choice():
    guard = RepetitionGuard(DIGITS)
    feed(guard, *["1"] * 20)
    only_digits = DIGITS.copy()
    assert guard.narrow(only_digits) is only_digits
