"""NATS subject matching, written out for the tests that judge the code's own matching against it."""

from __future__ import annotations


def subject_matches(pattern: str, subject: str) -> bool:
    """`*` matches one token, a final `>` one or more; other tokens match themselves."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)
