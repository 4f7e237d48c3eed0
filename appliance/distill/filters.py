"""Quality rules for harvested answers (pure): each returns the reason to drop, or None to keep."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter

from .records import Record

EMPTY, TRUNCATED, REFUSAL, WRONG_LANGUAGE, INVALID_JSON = "empty", "truncated", "refusal", "wrong_language", "invalid_json"
IDENTITY = "identity"

# Openings that refuse rather than answer; looked for near the start, where refusals put them.
_REFUSAL = re.compile(
    r"\b(i(?:'m| am) (?:sorry|afraid|unable|not able)|i (?:can ?not|can't|won't|will not|must decline)"
    r" (?:help|assist|provide|comply|answer|do that|fulfil|fulfill)|as an ai(?: language)? model"
    r"|i'm not (?:able|allowed) to|this request (?:violates|goes against))",
    re.IGNORECASE,
)
# The same in Chinese: an apology followed by "I cannot", and the "as an AI (model)" boilerplate.
_REFUSAL_ZH = re.compile(r"(?:抱歉|对不起|很遗憾|不好意思)[，,！!。\s]*(?:但是?)?我(?:无法|不能|没法|不可以|不便)"
                         r"|我(?:无法|不能)(?:提供|回答|协助|帮助|满足)(?:这|该|此|您)"
                         r"|作为(?:一个|一名)?(?:AI|ai|人工智能)(?:语言)?(?:模型|助手)")
_REFUSAL_WINDOW = 200

# A teacher speaking of itself: a student trained on "I am Gemini, trained by Google" says so to its
# users. First person plus a maker ("trained by ...", "由...训练"), or first person plus the teacher's
# own model family (from the record's teacher_model), anywhere near the start of the answer.
_MAKER_EN = re.compile(r"\bI(?: am|'m| was| have been)\s+(?:an?\s+)?(?:[\w-]+,?\s+){0,5}?"
                       r"(?:trained|developed|created|built|made|designed)\s+by\b", re.IGNORECASE)
_MAKER_ZH = re.compile(r"我(?:是|叫)[^。！？!?\n]{0,24}?由[^。！？!?\n]{0,20}?(?:训练|开发|创建|打造|研发|推出)")
_IDENTITY_WINDOW = 300


def _family(teacher_model: str) -> str | None:
    """"gemini" from "gemini-2.5-flash" or "models/gemini-pro", "gpt" from "gpt-4o-mini"; None when unknown."""
    match = re.match(r"[a-z]{3,}", teacher_model.lower().rsplit("/", 1)[-1])
    return match.group(0) if match else None


def speaks_as_teacher(answer: str, teacher_model: str = "") -> bool:
    """True when the answer claims, in the first person, to be the teacher or to come from its maker."""
    head = answer[:_IDENTITY_WINDOW]
    if _MAKER_EN.search(head) or _MAKER_ZH.search(head):
        return True
    family = _family(teacher_model)
    if family is None:
        return False
    name = rf"(?:chat)?{re.escape(family)}" if family == "gpt" else re.escape(family)
    first_person = (rf"\b(?:I am|I'm|my name is|I am called|this is)\s+(?:an?\s+)?(?:[\w.-]+\s+){{0,3}}?{name}\b"
                    rf"|我(?:是|叫|的名字是)[^。！？!?\n]{{0,12}}?{name}")
    return re.search(first_person, head, re.IGNORECASE) is not None

# The commonest function words per language: enough to tell paragraphs apart. A word several
# languages share counts for each of them in proportion (1/k), so "la" or "de" decide nothing alone.
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and is are was were of to in that it for on with as this be not have has you i "
                    "he she they we what which how but or by from at an will would can".split()),
    "fr": frozenset("le la les et est sont de des du un une que qui dans pour pas ce cette il elle avec sur au "
                    "en je vous nous ne mais ou quelle quel être avoir aux son sa ses leur très".split()),
    "de": frozenset("der die das und ist sind nicht ein eine zu mit den dem des von für auf ich sie es im "
                    "wir auch wie was aber oder sehr bei nach einen".split()),
    "es": frozenset("el la los las y es son de del que en un una por para con no se lo al su "
                    "pero como más muy este esta qué cuál yo".split()),
    "it": frozenset("il lo la gli le e è sono di del che in un una per con non si da al della "
                    "ma come più molto questo questa anche io".split()),
    "pt": frozenset("o a os as e é são de do da que em um uma para com não se por ao dos "
                    "mas como mais muito este esta também eu".split()),
    "nl": frozenset("de het een en is zijn van dat in op te met niet voor ik je die aan er "
                    "maar ook als bij wat hoe".split()),
}
_SHARED: dict[str, int] = {}
for _words in _STOPWORDS.values():
    for _word in _words:
        _SHARED[_word] = _SHARED.get(_word, 0) + 1
# Scripts that name their language outright (first matching wins; kana before Han for Japanese).
_SCRIPTS = (
    ("ja", ("HIRAGANA", "KATAKANA")),
    ("ko", ("HANGUL",)),
    ("zh", ("CJK",)),
    ("ru", ("CYRILLIC",)),
    ("ar", ("ARABIC",)),
    ("el", ("GREEK",)),
    ("he", ("HEBREW",)),
    ("hi", ("DEVANAGARI",)),
    ("th", ("THAI",)),
)
_MIN_STOPWORDS = 2.0
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def detect_language(text: str) -> str | None:
    """A language code for `text`, or None when it is too short or too mixed to tell (no model, no download)."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 8:
        return None
    scripts: Counter[str] = Counter()
    for char in letters:
        name = unicodedata.name(char, "")
        for code, prefixes in _SCRIPTS:
            if name.startswith(prefixes):
                scripts[code] += 1
                break
    if scripts:
        code, count = scripts.most_common(1)[0]
        if count >= 0.3 * len(letters):
            # Japanese mixes kana with Han; any real share of kana makes it Japanese.
            return "ja" if scripts.get("ja", 0) >= 0.1 * len(letters) else code
    words = [w.lower() for w in _WORD.findall(text)]
    hits = {code: sum(1 / _SHARED[w] for w in words if w in stop) for code, stop in _STOPWORDS.items()}
    ranked = sorted(hits.items(), key=lambda kv: kv[1], reverse=True)
    (best, top), (_, second) = ranked[0], ranked[1]
    # Close calls (es/pt, short texts) stay undecided rather than dropping a good answer.
    if top < _MIN_STOPWORDS or top < 1.5 * second:
        return None
    return best


def parse_json_answer(text: str) -> object:
    """The JSON value in an answer, allowing a ```json fence around it; raises ValueError if there is none."""
    stripped = text.strip()
    fence = re.match(r"^```[a-zA-Z]*\s*\n(.*?)\n?```$", stripped, re.DOTALL)
    return json.loads(fence.group(1) if fence else stripped)


def wanted_language(record: Record, rule: str) -> str | None:
    """The language `record`'s answer must be in under `rule` ("auto", "any" or a code); None = no check."""
    if record.language:
        return record.language.lower()
    if rule == "any":
        return None
    if rule == "auto":
        return detect_language(record.prompt)
    return rule.lower()


def rule_reason(record: Record, language_rule: str = "auto") -> str | None:
    """Why `record` should be dropped by the rules (empty, truncated, refusal, identity, wrong_language,
    invalid_json), or None."""
    answer = record.answer.strip()
    if not answer:
        return EMPTY
    if record.finish_reason == "length":
        return TRUNCATED
    if _REFUSAL.search(answer[:_REFUSAL_WINDOW]) or _REFUSAL_ZH.search(answer[:_REFUSAL_WINDOW]):
        return REFUSAL
    if speaks_as_teacher(answer, record.teacher_model):
        return IDENTITY
    if record.format == "json":
        try:
            parse_json_answer(answer)
        except ValueError:
            return INVALID_JSON
    wanted = wanted_language(record, language_rule)
    if wanted is not None:
        found = detect_language(answer)
        if found is not None and found != wanted:
            return WRONG_LANGUAGE
    return None
