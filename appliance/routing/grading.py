"""Whether a free-text student answer states a short gold answer, in English or Chinese (pure).

A number is right when the answer states it (as digits or Chinese numerals) and states no other
number as its result; a yes/no question by the answer's first word; anything else when an
accepted form appears as a whole word (or, in Chinese, as a substring).
"""

from __future__ import annotations

import re
import unicodedata

from ..cache.numbers import chinese_numeral

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_ZH_NUMERAL = re.compile(r"[零〇一二两三四五六七八九十百千万亿]{2,}")
_YES = ("yes", "true", "correct", "是", "对", "是的", "正确", "会", "能", "可以", "有")
_NO = ("no", "false", "not", "incorrect", "不", "否", "没有", "不是", "不会", "不能", "错")


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower().strip()


def _numbers(text: str) -> list[float]:
    found = [float(m.group(0).replace(",", "")) for m in _NUMBER.finditer(text)]
    for m in _ZH_NUMERAL.finditer(text):
        value = chinese_numeral(m.group(0))
        if value is not None:
            found.append(float(value))
    return found


def _is_number(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+(?:,\d{3})*(?:\.\d+)?", text.strip()))


_EN_YES_NO = re.compile(r"(?<![a-z'])(yes|no|not|true|false|correct|incorrect|isn't|aren't|doesn't|cannot)(?![a-z])")


def _yes_no(text: str) -> str | None:
    """The answer's yes or no: its first word, else the first yes/no word of its first sentence."""
    head = _norm(text).lstrip("*\"' ")
    for word in sorted(_NO + _YES, key=len, reverse=True):  # 不是 before 是
        if head.startswith(word) and (not word.isascii() or not head[len(word):len(word) + 1].isalpha()):
            return "no" if word in _NO else "yes"
    first = re.split(r"[.!?。！？\n]", head, maxsplit=1)[0]
    match = _EN_YES_NO.search(first)
    if match:
        return "yes" if match.group(1) in ("yes", "true", "correct") else "no"
    return None


def correct(answer: str, gold: str, aliases: list[str] | tuple[str, ...] = (), category: str = "") -> bool:
    text = _norm(answer)
    forms = [_norm(f) for f in (gold, *aliases) if f]
    if category == "yesno" or _norm(gold) in ("yes", "no", "是", "否"):
        want = "yes" if _norm(gold) in ("yes", "是") else "no"
        return _yes_no(answer) == want
    if _is_number(gold):
        value = float(gold.replace(",", ""))
        stated = _numbers(text)
        # Right when the value is stated and is the last number (the result, not a restated operand).
        return bool(stated) and value in stated and stated[-1] == value
    for form in forms:
        if form.isascii():
            if re.search(rf"(?<![a-z0-9]){re.escape(form)}(?![a-z0-9])", text):
                return True
        elif form in text:
            return True
    return False
