"""Which language a user wrote in: Korean or English, so that the reply follows the user."""

from __future__ import annotations

from typing import Literal

Language = Literal["ko", "en"]


def _is_hangul(ch: str) -> bool:
    o = ord(ch)
    return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F


def detect_language(text: str) -> Language | None:
    """``"ko"`` or ``"en"`` for ``text``, or None when it has no letters (e.g. only an order number).

    A Hangul syllable carries about as much as two or three Latin letters, so a
    message counts as Korean when Hangul characters x 2 >= Latin letters
    ("나이키 sneakers 있어요?" is Korean; "Nike 신발" too).
    """
    hangul = sum(1 for ch in text if _is_hangul(ch))
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    if hangul == 0 and latin == 0:
        return None
    return "ko" if hangul * 2 >= latin else "en"
