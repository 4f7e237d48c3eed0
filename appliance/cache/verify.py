"""The check between a nearest neighbour and a cache hit: do the two questions really ask the same thing?

A sentence embedding places "猫可以吃巧克力吗" and "狗可以吃巧克力吗", or "7B" and "70B", closer than many
true paraphrases, so similarity alone serves wrong answers. The check looks at what the two questions
*differ in*, in English and Chinese alike:

1. Grammar that flips an answer, from closed classes of each language rather than topic word lists:
   numbers (digits, English number words, Chinese numerals), negation (not/n't/never, 不/没/未...),
   future against past or present (will, 会/将), and words that swap roles ("A 比 B", "USD to EUR").
2. The words only one side has. Frequent function words and particles (the, please, 的, 吗, 呢) may
   differ: their frequency comes from wordfreq's corpus counts, not from a list kept here. Every other
   differing span must be matched by a span of the other question that the embedder places close
   enough (fridge / refrigerator, 如何 / 怎么); a span with no counterpart blocks the hit.

The thresholds are `VerifyParams`, chosen on the dev half of the pair sets in tests/data by
scripts/bench_cache.py; the README reports the test half. Any doubt is a miss: a miss costs a student
answer, a false hit serves another question's answer.
"""

from __future__ import annotations

import difflib
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import segment
from .lexicon import chinese_synonyms
from .numbers import number_of, numbers


@dataclass(frozen=True)
class MatchCheck:
    """Whether a candidate may be served for a query, and why not when it may not."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class VerifyParams:
    """Thresholds of the check; defaults chosen on the dev half of the pair sets (scripts/bench_cache.py)."""

    # A word at least this frequent (wordfreq's Zipf scale: 6 is once per thousand words) may be added,
    # dropped or swapped for another such word without changing the question.
    free_zipf: float = 5.0
    # Two differing spans are the same thing said otherwise when the embedder places them this close.
    span_similarity: float = 0.90


# A differing pair of spans to be judged by the embedder: (span of the query, span of the candidate).
SpanPair = tuple[str, str]
SpanSimilarity = Callable[[Sequence[SpanPair]], Sequence[float]]


# --- normalising chat messages --------------------------------------------------------------------

def _content_text(content: Any) -> str:
    # OpenAI clients may send content as a list of parts; only text parts say what is asked.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def normalize_prompt(messages: Iterable[Mapping[str, Any]]) -> str:
    """The text the cache embeds and verifies: the last user turn first, then system and earlier user turns.

    The last user turn leads because an embedder truncates long inputs: a long system prompt must not
    push the actual question out. Assistant turns are left out; they follow from the user turns.
    """
    turns = [(str(m.get("role", "")), _collapse(_content_text(m.get("content")))) for m in messages]
    turns = [(role, text) for role, text in turns if role in ("system", "developer", "user") and text]
    last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i][0] == "user"), None)
    if last_user is None:
        return " ".join(text for _, text in turns)
    question = turns[last_user][1]
    context = [f"{role}: {text}" for i, (role, text) in enumerate(turns) if i != last_user]
    return question if not context else question + "\n" + " | ".join(context)


# --- closed grammatical classes -------------------------------------------------------------------

# Negators of each language. Chinese negation is a prefix of many words (不能, 没有, 无法, 未必), so a word
# starting with one of these characters counts; a lexicalised word such as 不错 or 非常 then counts too,
# which can only turn a hit into a miss.
_EN_NEGATIONS = frozenset("not no never cannot without none nobody nothing neither nor nowhere".split())
_ZH_NEGATION_PREFIXES = tuple("不没未无非别勿莫")
# Future markers. Past and present may differ ("Who painted X" / "Who did paint X"); future and
# non-future may not ("谁赢了" / "谁会赢", "who won" / "who will win").
_EN_FUTURE = frozenset({"will", "shall", "gonna"})
_ZH_FUTURE = ("会", "将", "将要", "即将", "将会")
# English auxiliaries also mark past against present ("What was the capital" / "What is the capital");
# compared only when both questions carry one, since "Who wrote X" / "Who is the author of X" agree.
_EN_PAST = frozenset({"was", "were", "did", "had"})
_EN_PRESENT = frozenset({"is", "are", "am", "does", "do", "has", "have"})
# Words at least this common (wordfreq Zipf) are function words: they alone cannot swap roles. Chinese
# words score higher on the scale (人 6.7, 中国 6.4), so its function words (的, 是, 我) start higher.
_FUNCTION_ZIPF = {"en": 6.3, "zh": 6.9}


def _is_chinese(word: str) -> bool:
    return "\u3400" <= word[0] <= "\u9fff" or "\uf900" <= word[0] <= "\ufaff"


def _is_negation(word: str) -> bool:
    if _is_chinese(word):
        return word.startswith(_ZH_NEGATION_PREFIXES)
    return word in _EN_NEGATIONS or word.endswith("n't")


def _is_future(word: str) -> bool:
    return word in _EN_FUTURE or word in _ZH_FUTURE


def _tenses(words: Sequence[str]) -> frozenset[str]:
    marks = set()
    for w in words:
        if _is_future(w):
            marks.add("future")
        elif w in _EN_PAST:
            marks.add("past")
        elif w in _EN_PRESENT:
            marks.add("present")
    return frozenset(marks)


@functools.lru_cache(maxsize=65536)
def zipf(word: str) -> float:
    """How common a word is (wordfreq's Zipf scale, 0 for unknown words) in its language."""
    from wordfreq import zipf_frequency

    if len(word) == 1 and word.isupper():
        return 0.0  # a capital letter inside a sentence names something ("type A"); see segment.words
    return float(zipf_frequency(word, "zh" if _is_chinese(word) else "en"))


# --- the comparison (pure but for word frequencies) -----------------------------------------------

@dataclass(frozen=True)
class Analysis:
    words: tuple[str, ...]
    numbers: Counter[str]
    negations: int
    tenses: frozenset[str]


def analyze(text: str) -> Analysis:
    words = tuple(segment.words(text))
    return Analysis(words, numbers(list(words)), sum(map(_is_negation, words)), _tenses(words))


@dataclass(frozen=True)
class Comparison:
    """What two questions differ in: a reason that blocks outright, or the spans the embedder must judge."""

    blocked: str = ""
    spans: tuple[SpanPair, ...] = field(default_factory=tuple)


def _common_order(a: Sequence[str], b: Sequence[str]) -> tuple[list[str], list[str]]:
    """Each side's words that the other also has (as many times as both have them), in order."""
    shared = Counter(a) & Counter(b)
    out = []
    for words in (a, b):
        left = Counter(shared)
        kept = []
        for w in words:
            if left[w] > 0:
                kept.append(w)
                left[w] -= 1
        out.append(kept)
    return out[0], out[1]


def _between(words: Sequence[str], first: Sequence[str], second: Sequence[str]) -> tuple[str, ...] | None:
    """The words between the end of phrase `first` and the start of a later phrase `second`, if both occur."""
    n, f, g = len(words), len(first), len(second)
    for i in range(n - f + 1):
        if list(words[i:i + f]) == list(first):
            for j in range(i + f, n - g + 1):
                if list(words[j:j + g]) == list(second):
                    return tuple(words[i + f:j])
    return None


def _roles_swapped(a: Sequence[str], b: Sequence[str]) -> bool:
    """True when two short phrases trade places around a fixed word.

    Word order says who does what to whom: "dog bit cat" / "cat bit dog", "USD to EUR" / "EUR to USD",
    "A 比 B 大" / "B 比 A 大" exchange short phrases X and Y around a shared middle. Function words that
    move ("how do I" / "what can I do") and clauses that move whole ("In Python, how do I sort a list" /
    "How do I sort a list in Python") are not swaps. A reorder of content words that is neither
    counts as one, since the check cannot read it.
    """
    ca = [w for w in _common_order(a, b)[0] if _has_content((w,))]
    cb = [w for w in _common_order(a, b)[1] if _has_content((w,))]
    if ca == cb:
        return False
    n = len(ca)
    if n > 40:
        return True  # too long to search; a miss is the safe answer
    prefix = 0
    while ca[prefix] == cb[prefix]:
        prefix += 1
    suffix = 0
    while ca[n - 1 - suffix] == cb[n - 1 - suffix]:
        suffix += 1
    moved = swapped = False
    for p in range(prefix + 1):
        for s in range(suffix + 1):
            ma, mb = ca[p:n - s], cb[p:n - s]
            m = len(ma)
            for j in range(1, m):
                for k in range(j, m):
                    x, z, y = ma[:j], ma[j:k], ma[k:]
                    if y + z + x != mb:
                        continue
                    if max(len(x), len(y)) > 3:
                        moved = True  # a clause moved
                    elif z:
                        swapped = True  # X Z Y -> Y Z X
                    else:
                        # Adjacent content phrases: a swap when function words join them the same
                        # way on both sides ("from X to Y" / "from Y to X"), else one phrase moved.
                        joint_a, joint_b = _between(a, x, y), _between(b, y, x)
                        if p == s == 0 and _copular_question(x, y, joint_a, joint_b):
                            moved = True  # "什么是X" / "X是什么": an identity asked either way round
                        elif joint_a and joint_b and set(joint_a) & set(joint_b):
                            swapped = True
                        else:
                            moved = True
    # A repeated word can make one reorder readable both ways; moving a phrase is the plainer reading.
    return swapped and not moved or not (swapped or moved)


# Interrogatives and the copula are closed classes. A copula joins two sides that can trade places
# when one of them is the question word ("什么是蒸馏" / "蒸馏是什么", "谁是他的老师" / "他的老师是谁");
# around any other verb the trade changes who does what ("谁打了他" / "他打了谁"), so only the copula counts,
# and only when the two sides are the whole question ("谁是张三的父亲" / "张三是谁的父亲" ask different things).
_INTERROGATIVES = frozenset({"what", "who", "which", "什么", "谁", "哪个", "哪些", "啥"})
_COPULAS = frozenset({"is", "are", "是"})


def _copular_question(x: Sequence[str], y: Sequence[str], joint_a: Sequence[str] | None,
                      joint_b: Sequence[str] | None) -> bool:
    if not joint_a or not joint_b or set(joint_a) != set(joint_b) or not set(joint_a) <= _COPULAS:
        return False
    return (len(x) == 1 and x[0] in _INTERROGATIVES) != (len(y) == 1 and y[0] in _INTERROGATIVES)


def _has_content(words: Sequence[str]) -> bool:
    return any(zipf(w) < _FUNCTION_ZIPF["zh" if _is_chinese(w) else "en"] for w in words)


def _same_family(left: str, right: str) -> bool:
    """encrypt / decrypt, upload / download, 沸点 / 冰点: one word family, told apart by its first part.

    Such pairs embed nearly alike yet are usually opposites. Inflections (remove / removing) share the
    start instead, and a word inside the other (冰箱 / 电冰箱) is the same thing named more fully.
    """
    if " " in left or " " in right:
        return False
    if _is_chinese(left) and _is_chinese(right):
        # One character is too little for the embedder to judge (上/下, 前/后); words of equal length
        # that differ in one character are one family (饭前/饭后, 上市/退市, 高血压/低血压).
        # A character put inside a word makes another compound (碳酸钠/碳酸氢钠); one put in front
        # names the same thing more fully (冰箱/电冰箱), and is left to the embedder.
        if min(len(left), len(right)) == 1:
            return True
        if len(left) == len(right) <= 4:
            return sum(x != y for x, y in zip(left, right)) == 1
        short, long = sorted((left, right), key=len)
        return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short
                                                   for i in range(1, len(long) - 1))
    if left in right or right in left:
        return False
    common = 0
    while common < min(len(left), len(right)) and left[-1 - common] == right[-1 - common]:
        common += 1
    shorter = min(len(left), len(right))
    # The shared tail must be the stem (crypt, load, 点), not a suffix such as -est or -ing.
    need = max(1 if _is_chinese(left) else 3, (shorter + 1) // 2)
    return need <= common < shorter


def _join(words: Sequence[str]) -> str:
    out = ""
    for w in words:
        if out and not (_is_chinese(w) and _is_chinese(out[-1])):
            out += " "
        out += w
    return out


def compare(a: Analysis, b: Analysis, params: VerifyParams) -> Comparison:
    """Block on grammar that flips answers; otherwise list the content spans that differ, paired."""
    if a.numbers != b.numbers:
        only = (a.numbers - b.numbers) + (b.numbers - a.numbers)
        return Comparison(blocked=f"numbers differ: {', '.join(sorted(only))}")
    if a.negations != b.negations:
        return Comparison(blocked="negation differs")
    if ("future" in a.tenses) != ("future" in b.tenses) or (a.tenses and b.tenses and a.tenses != b.tenses):
        return Comparison(blocked="tense differs")
    if _roles_swapped(a.words, b.words):
        return Comparison(blocked="word order swaps roles")

    def free(word: str) -> bool:
        return number_of(word) is None and not _is_negation(word) and zipf(word) >= params.free_zipf

    # Words only one side has, grouped into aligned spans; shared words that merely moved are not spans.
    only_a = Counter(a.words) - Counter(b.words)
    only_b = Counter(b.words) - Counter(a.words)
    spans: list[SpanPair] = []
    unmatched_a: list[str] = []
    unmatched_b: list[str] = []
    matcher = difflib.SequenceMatcher(None, a.words, b.words, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        # A frequent word may come or go ("please", 的, 吗); one frequent word put in place of another
        # (some / all, is / was) is judged like any other replacement. Numbers were compared above.
        def keep(word: str, replacing: bool = tag == "replace") -> bool:
            if segment.mood_particle(word):
                return False  # 吗 for 呢: the tone of the question, not its content
            return number_of(word) is None if replacing else not free(word)

        side_a = [w for w in a.words[i1:i2] if only_a[w] > 0 and keep(w)]
        side_b = [w for w in b.words[j1:j2] if only_b[w] > 0 and keep(w)]
        for w in a.words[i1:i2]:
            only_a[w] -= 1
        for w in b.words[j1:j2]:
            only_b[w] -= 1
        if side_a and side_b:
            spans.append((_join(side_a), _join(side_b)))
        else:
            unmatched_a += side_a
            unmatched_b += side_b
    # A content word inserted in one place and another dropped elsewhere ("what year ... fall" /
    # "when ... come down") still pair up as one span each.
    if unmatched_a and unmatched_b:
        spans.append((_join(unmatched_a), _join(unmatched_b)))
    elif unmatched_a or unmatched_b:
        return Comparison(blocked=f"only one asks about {_join(unmatched_a or unmatched_b)!r}")
    return Comparison(spans=tuple(spans))


def check_match(query: str, candidate: str, similarity: SpanSimilarity,
                params: VerifyParams = VerifyParams()) -> MatchCheck:
    """May `candidate`'s answer be served for `query`? `similarity` embeds differing spans."""
    for text in (query, candidate):
        cover = segment.coverage(text)
        if not cover.covered:
            return MatchCheck(False, cover.reason)
    comparison = compare(analyze(query), analyze(candidate), params)
    if comparison.blocked:
        return MatchCheck(False, comparison.blocked)
    # Listed synonyms need no embedder; the rest are judged by it.
    spans = [(left, right) for left, right in comparison.spans if not chinese_synonyms(left, right)]
    for left, right in spans:
        if _same_family(left, right):
            return MatchCheck(False, f"{left!r} and {right!r} are different words of one family")
    if spans:
        for (left, right), score in zip(spans, similarity(spans)):
            if score < params.span_similarity:
                return MatchCheck(False, f"{left!r} is not {right!r} (similarity {score:.2f})")
    return MatchCheck(True, "same numbers, negation, tense and roles; differing words mean the same")
