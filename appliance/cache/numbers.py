"""Numbers a question mentions, written in digits, English words or Chinese numerals, as one form.

"3 cups", "three cups" and "三杯" all give "3"; "7B" and "70B" give "7b" and "70b". Two questions whose
numbers differ ask different things, however close they embed.
"""

from __future__ import annotations

import re
from collections import Counter

_DIGITS = re.compile(r"^([0-9]+(?:[.,][0-9]+)*)([a-z%]*)$")
_ENGLISH = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "thousand": 1000, "million": 10**6, "billion": 10**9, "dozen": 12, "half": 0.5, "twice": 2,
    "double": 2, "triple": 3, "first": 1, "third": 3, "fourth": 4, "fifth": 5,
}
# Not here: "one" (also a pronoun: "how often should one...") and "second" (also a unit of time).
_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
              "八": 8, "九": 9}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}
_ZH_BIG = {"万": 10**4, "亿": 10**8}
_ZH_NUMERAL = re.compile(r"^第?([零〇一二两三四五六七八九十百千万亿]+)([个只本天年月日次岁米元块斤克度倍位名人条件台杯层号点分]?)$")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def chinese_numeral(text: str) -> int | None:
    """三百五十 -> 350, 十二 -> 12, 两万 -> 20000, 二〇二四 -> 2024; None if not a numeral."""
    if not text or any(ch not in _ZH_DIGITS and ch not in _ZH_UNITS and ch not in _ZH_BIG for ch in text):
        return None
    if all(ch in _ZH_DIGITS for ch in text) and len(text) > 1:  # read digit by digit: 二〇二四
        return int("".join(str(_ZH_DIGITS[ch]) for ch in text))
    total, section, digit = 0, 0, None
    for ch in text:
        if ch in _ZH_DIGITS:
            digit = _ZH_DIGITS[ch]
        elif ch in _ZH_UNITS:
            section += (1 if digit is None else digit) * _ZH_UNITS[ch]
            digit = None
        else:
            total += (section + (digit or 0)) * _ZH_BIG[ch]
            section, digit = 0, None
    return total + section + (digit or 0)


def number_of(word: str) -> str | None:
    """The canonical number a single word stands for, with its unit suffix; None for other words."""
    match = _DIGITS.match(word)
    if match:
        digits, suffix = match.groups()
        return digits.replace(",", "") + suffix
    if word in _ENGLISH:
        return _fmt(_ENGLISH[word])
    match = _ZH_NUMERAL.match(word)
    if match:
        value = chinese_numeral(match.group(1))
        # 一 with or without a measure word is also the article "a" (一个成年人): only 第一 counts.
        if value is not None and (match.group(1) != "一" or word.startswith("第")):
            return _fmt(value)
    return None


_ZH_RUN = re.compile(r"(第?)([零〇一二两三四五六七八九十百千万亿]+)")


def _numbers_inside(word: str) -> list[str]:
    # jieba keeps some numerals inside longer words (第二次世界大战); a lone 一 is an article unless 第一.
    out = []
    for prefix, run in _ZH_RUN.findall(word):
        if run == "一" and not prefix:
            continue
        value = chinese_numeral(run)
        if value is not None:
            out.append(_fmt(value))
    return out


def numbers(words: list[str]) -> Counter[str]:
    """The multiset of numbers among `words`, numerals inside longer Chinese words included."""
    found: Counter[str] = Counter()
    for word in words:
        value = number_of(word)
        if value is not None:
            found[value] += 1
        elif "\u3400" <= word[0] <= "\u9fff":
            found.update(_numbers_inside(word))
    return found
