"""Choosing the cache's thresholds on labelled question pairs, and scoring them (pure).

A pair is a paraphrase (the same answer serves both) or a change (it does not). The cache hits when
the pair's cosine reaches `[cache].threshold` and `check_match` passes. `choose` picks, on the dev
half only, the thresholds with no false hit and the most paraphrase hits; the test half is scored
with them and reported, never tuned on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .verify import MatchCheck, VerifyParams


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    paraphrase: bool
    kind: str
    lang: str
    split: str


@dataclass(frozen=True)
class Setting:
    threshold: float
    params: VerifyParams


@dataclass(frozen=True)
class Score:
    paraphrases: int
    paraphrase_hits: int
    changes: int
    false_hits: int

    @property
    def hit_rate(self) -> float:
        return self.paraphrase_hits / self.paraphrases if self.paraphrases else 0.0

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.changes if self.changes else 0.0


Verdict = Callable[[Pair, Setting], bool]


def score(pairs: Iterable[Pair], setting: Setting, hits: Verdict) -> Score:
    para = para_hits = changes = false = 0
    for pair in pairs:
        hit = hits(pair, setting)
        if pair.paraphrase:
            para += 1
            para_hits += hit
        else:
            changes += 1
            false += hit
    return Score(para, para_hits, changes, false)


def grid(thresholds: Sequence[float], free_zipfs: Sequence[float],
         span_similarities: Sequence[float]) -> list[Setting]:
    return [Setting(t, VerifyParams(free_zipf=z, span_similarity=s))
            for t, z, s in itertools.product(thresholds, free_zipfs, span_similarities)]


def choose(dev: Sequence[Pair], settings: Sequence[Setting], hits: Verdict) -> tuple[Setting, Score]:
    """The setting with zero false hits on `dev` and the most paraphrase hits in its worst language.

    Ties go to the strictest setting (highest thresholds, rarest free words), which leaves the most
    margin on questions the dev half never showed.
    """
    langs = sorted({p.lang for p in dev})

    def key(setting: Setting) -> tuple[float, ...]:
        per_lang = [score([p for p in dev if p.lang == lang], setting, hits) for lang in langs]
        false = sum(s.false_hits for s in per_lang)
        worst = min(s.hit_rate for s in per_lang)
        mean = sum(s.hit_rate for s in per_lang) / len(per_lang)
        return (-false, worst, mean, setting.params.span_similarity, setting.threshold,
                setting.params.free_zipf)

    best = max(settings, key=key)
    return best, score(dev, best, hits)


def verdict_of(check: Callable[[Pair, Setting], MatchCheck], cosine: Callable[[Pair], float]) -> Verdict:
    def hits(pair: Pair, setting: Setting) -> bool:
        return cosine(pair) >= setting.threshold and check(pair, setting).ok
    return hits
