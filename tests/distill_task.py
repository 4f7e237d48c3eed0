"""A task whose right answers are known, for the distillation tests: the sentiment of a short review.

The fake teacher labels a review by counting its positive and negative words, so every answer
is right and a student's agreement with the teacher is a real, checkable number.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

POSITIVE = ("great", "wonderful", "excellent", "delightful", "superb", "lovely", "fantastic", "charming",
            "pleasant", "brilliant", "friendly", "perfect")
NEGATIVE = ("terrible", "awful", "horrible", "dreadful", "poor", "disappointing", "rude", "broken",
            "boring", "nasty", "bland", "filthy")
NOUNS = ("food", "service", "movie", "hotel room", "phone", "book", "staff", "coffee", "concert", "shoes",
         "laptop", "pizza", "garden", "train ride", "museum", "headphones", "soup", "game", "camera", "bakery")
OPENERS = ("Honestly,", "Overall", "Last week", "To be fair,", "In short,", "Sadly or not,", "As expected,", "Well,")
TEMPLATES = (
    "{o} the {n1} was {a1}.",
    "{o} the {n1} was {a1} and the {n2} felt {a2}.",
    "The {n1} was {a1}; {o} the {n2} was {a2} too.",
    "{o} I thought the {n1} was {a1}.",
)
QUESTION = "Review: {review}\nSentiment?"
_REVIEW = re.compile(r"Review: (.*)\nSentiment\?", re.DOTALL)


def review(rng: random.Random, label: str) -> str:
    words = POSITIVE if label == "positive" else NEGATIVE
    n1, n2 = rng.sample(NOUNS, 2)
    return rng.choice(TEMPLATES).format(o=rng.choice(OPENERS), n1=n1, n2=n2, a1=rng.choice(words), a2=rng.choice(words))


def label_of(text: str) -> str:
    """The right label, from the review's own words (what the fake teacher answers)."""
    match = _REVIEW.search(text)
    body = (match.group(1) if match else text).lower()
    words = re.findall(r"[a-z]+", body)
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return "positive" if score > 0 else "negative"


def teacher_answer(prompt: str) -> str:
    """The fake Gemini's reply: the label, or (when the system asked for it) reasoning first."""
    return label_of(prompt)


def prompts(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct sentiment prompts, half positive, in two categories (reviews of places and of things)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    items = []
    while len(items) < n:
        label = ("positive", "negative")[len(items) % 2]
        text = review(rng, label)
        if text in seen:
            continue
        seen.add(text)
        items.append({"prompt": QUESTION.format(review=text), "category": "sentiment", "expected": label})
    return items


def write_prompts(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in prompts(n, seed)))
    return path
