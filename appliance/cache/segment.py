"""Words of a question in English or Chinese, and whether the cache can read it at all.

English is split on letters and digits; Chinese runs are segmented with jieba's dictionary, so
"猫可以吃巧克力吗" becomes 猫 / 可以 / 吃 / 巧克力 / 吗 and the verifier can see which word two
questions differ in. Text in any other script is *uncovered*: neither the segmenter nor the
checks that follow were built or measured for it, so such a question is never served from the cache.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

# Scripts the segmenter and the verifier's checks were measured on.
_COVERED_SCRIPTS = ("LATIN", "CJK")
HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""The Han character ranges (CJK extension A, unified, compatibility), for regex classes."""
_HAN_CHAR = re.compile(f"[{HAN}]")


def has_han(text: str) -> bool:
    """Whether the text holds any Chinese character: picks the language of prompts and features."""
    return _HAN_CHAR.search(text) is not None

# Chinese and English numbers are read whole (三百五十, 7.5b, 70%) so that numbers.py can compare them.
_TOKEN = re.compile(
    rf"[0-9]+(?:[.,][0-9]+)*[a-z%]*"      # 7, 3.5, 70b, 1,000, 50%
    rf"|[a-z]+(?:'[a-z]+)?"               # words, with an apostrophe kept (don't, cat's)
    rf"|[{HAN}]+"                        # a Chinese run, segmented below
    rf"|[+\-*/=<>^%&|~]"                  # operators: "5 + 3" and "5 - 3" differ in nothing else
)

_jieba_lock = threading.Lock()
_jieba = None


@dataclass(frozen=True)
class Coverage:
    """Whether the cache may judge this text; `reason` names what it cannot read."""

    covered: bool
    reason: str = ""


def coverage(text: str) -> Coverage:
    """Covered when every letter is Latin or Chinese (Han); digits, punctuation and symbols are fine."""
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        if not name.startswith(_COVERED_SCRIPTS):
            script = name.split(" ")[0] if name else f"U+{ord(ch):04X}"
            return Coverage(False, f"{script.lower()} script ({ch!r}) is not covered by the cache's checks")
    return Coverage(True)


def normalize(text: str) -> str:
    """NFKC (full-width letters, digits and punctuation to their plain forms), lower case."""
    return unicodedata.normalize("NFKC", text).lower()


def chinese_words(run: str) -> list[str]:
    """A run of Chinese characters cut into words (jieba, dictionary only)."""
    return [w for w in _segmenter().cut(run, HMM=False) if w.strip()]


def mood_particle(word: str) -> bool:
    """A one-character sentence-final particle (吗, 呢, 吧, 嘛): a word the segmenter's own lexicon tags
    `y` (语气词). It sets the tone of a question, never what it asks, so 吗 and 呢 may trade places."""
    return len(word) == 1 and word in _mood_particles()


@functools.cache
def _mood_particles() -> frozenset[str]:
    import jieba

    found = set()
    with jieba.get_dict_file() as lexicon:  # lines of "word frequency part-of-speech"
        for line in lexicon:
            parts = line.decode("utf-8").split()
            if len(parts) == 3 and parts[2] == "y" and len(parts[0]) == 1:
                found.add(parts[0])
    return frozenset(found)


def _segmenter() -> Any:
    global _jieba
    with _jieba_lock:
        if _jieba is None:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _jieba = tokenizer
        return _jieba


# English contractions, with and without their apostrophe ("what's", "whats"), read as their full
# words, so that "What's X" and "what is x" compare equal. A closed class of the written language.
_CONTRACTED = {"can't": "can not", "cant": "can not", "won't": "will not", "shan't": "shall not",
               "ain't": "is not", "im": "i am", "ive": "i have", "youre": "you are", "theyre": "they are",
               "whats": "what is", "thats": "that is", "whos": "who is", "hows": "how is", "wheres": "where is",
               "theres": "there is", "lets": "let us", "let's": "let us"}
_NOT_SUFFIXED = ("dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "havent", "hasnt", "hadnt",
                 "couldnt", "shouldnt", "wouldnt", "mustnt", "neednt")
_CLITICS = {"n't": "not", "'re": "are", "'ve": "have", "'ll": "will", "'d": "would", "'m": "am"}
_IS_CLITIC_HOSTS = frozenset("what who where when why how it that there here he she".split())
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


_HOW_AUXILIARIES = frozenset("do does can could should would may might".split())


def _expand(token: str) -> list[str]:
    if token in _CONTRACTED:
        return _CONTRACTED[token].split()
    if token in _NOT_SUFFIXED:
        return [token[:-2], "not"]
    for clitic, full in _CLITICS.items():
        if token.endswith(clitic) and len(token) > len(clitic):
            return [token[: -len(clitic)], full]
    if token.endswith("'s"):
        host = token[:-2]
        # "what's" is "what is"; "cat's" is a possessive, which changes nothing the cache compares.
        return [host, "is"] if host in _IS_CLITIC_HOSTS else [host]
    return [token]


def _inside_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip()
    return bool(before) and before[-1] not in ".?!。？！:：;；"


# The A-not-A question (能不能, 是不是, 有没有, 可不可以) asks, it does not negate: read as its verb alone.
_A_NOT_A = re.compile(rf"([{HAN}])[不没]\1")


def words(text: str) -> list[str]:
    """The question's words in order: English words, numbers, operators and segmented Chinese words."""
    out: list[str] = []
    source = _A_NOT_A.sub(r"\1", unicodedata.normalize("NFKC", text).translate(_APOSTROPHES))
    for match in _TOKEN.finditer(source.lower()):
        token = match.group(0)
        original = source[match.start():match.end()]
        if len(original) == 1 and original.isupper() and original != "I" and _inside_sentence(source, match.start()):
            out.append(original)  # "type A", "plan B", "vitamin C": a name, not the article
            continue
        if re.fullmatch(f"[{HAN}]+", token):
            out.extend(w for w in _segmenter().cut(token, HMM=False) if w.strip())
        elif token[0].isalpha():
            out.extend(_expand(token))
        else:
            out.append(token)
    # After "how" an auxiliary asks nothing of its own: "how do I", "how can I", "how should I" agree.
    return [w for i, w in enumerate(out) if not (i and out[i - 1] == "how" and w in _HOW_AUXILIARIES)]
