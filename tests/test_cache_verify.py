"""The verification step between a nearest neighbour and a cache hit (appliance/cache/verify.py).

The tables are held out: none of these pairs is in scripts/bench_cache.py, which the rules were tuned on.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.cache.verify import check_match, normalize_prompt
from appliance.config import CacheConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# (query, candidate): the same question in other words; the cached answer may be served.
PARAPHRASES = [
    ("How do I reset my router?", "How can I reset my router?"),  # modal verbs are not content
    ("What's the capital of Italy?", "What is the capital of Italy?"),  # contraction
    ("How do I purchase a train ticket?", "How can I buy a train ticket?"),  # synonym map: buy/purchase
    ("Where is the Colosseum?", "Where is the Colosseum located?"),  # "located" only frames the question
    ("How do I remove a virus from my laptop?", "How can I delete a virus from my laptop?"),  # remove/delete
    ("What's the biggest ocean on Earth?", "Which ocean on Earth is the largest?"),  # word order, big/large
    ("Explain quantum computing", "What is quantum computing?"),  # imperative vs question
    ("How do I fix a leaking faucet?", "How can I repair a leaking faucet?"),  # fix/repair
    ("How many calories are in one banana?", "How many calories are in a banana?"),  # "one" == "a"
    ("How do I install Node.js on Ubuntu?", "How can I install Node.js on Ubuntu?"),  # dotted names
    ("Can you recommend a good podcast about history?", "Suggest a good history podcast"),  # politeness
    ("What does NASA stand for?", "What is NASA short for?"),  # phrase: stand for / short for
    ("What are the symptoms of dehydration?", "What are common dehydration symptoms?"),  # plural + filler
    ("How far is Mars from the Sun?", "What is the distance from the Sun to Mars?"),  # how far == distance
    ("How do I merge 2 PDF files?", "How can I merge two PDF files?"),  # written-out number == digit
    ("What's the best way to learn Rust?", "How should I learn Rust?"),  # "best way to" == "how to"
    ("How do I change a flat tire?", "How do I replace a flat tyre?"),  # spelling variant + synonym
    ("How old is the Great Wall of China?", "What is the age of the Great Wall of China?"),  # how old == age
    ("How do I convert 1,000 USD to EUR?", "How can I convert 1000 USD to EUR?"),  # thousands separator
    ("How much VRAM does a 7 billion parameter model need?", "How much VRAM does a 7B parameter model need?"),
    ("What is 12+7?", "what is 12 + 7"),  # spacing around an operator
    ("How do I fine-tune GPT-2?", "How can I fine-tune GPT-2?"),  # hyphens inside words are not minus signs
    ("Who invented the telephone?", "Who was the inventor of the telephone?"),  # no auxiliary: tense unknown
]

# (query, candidate, kind): one important word differs; serving the cached answer would be wrong.
ONE_WORD_CHANGES = [
    ("Is it safe to mix bleach with vinegar?", "Is it safe to mix bleach with ammonia?", "object"),
    ("How much RAM do I need for a 7B model?", "How much RAM do I need for a 70B model?", "model size"),
    ("Should I turn the heat up when I leave the house?", "Should I turn the heat down when I leave the house?",
     "direction"),
    ("What is the best time to visit Paris?", "What is the best time to visit Rome?", "entity"),
    ("Should I stretch before running?", "Should I stretch after running?", "before/after"),
    ("How do I increase my metabolism?", "How do I decrease my metabolism?", "increase/decrease"),
    ("Can I drink coffee while pregnant?", "Can I not drink coffee while pregnant?", "negation"),
    ("Can I eat cheese without a gallbladder?", "Can I eat cheese with a gallbladder?", "without == negation"),
    ("Is 3.5 GPA good for grad school?", "Is 2.5 GPA good for grad school?", "decimal"),
    ("What was popular in the 1980s?", "What was popular in the 1990s?", "decade"),
    ("Give me three tips for a job interview", "Give me five tips for a job interview", "written numbers"),
    ("How do I convert kilograms to pounds?", "How do I convert pounds to kilograms?", "swap around 'to'"),
    ("Which is the cheapest day to fly?", "Which is the most expensive day to fly?", "antonym"),
    ("Is it better to rent or buy in London?", "Is it better to rent or buy in Berlin?", "entity"),
    ("What's the minimum wage in California?", "What's the maximum wage in California?", "min/max"),
    ("Why do my knees hurt when I walk upstairs?", "Why do my knees hurt when I walk downstairs?", "direction"),
    ("Is it healthy to skip breakfast?", "Is it unhealthy to skip breakfast?", "prefix negation"),
    ("How do I turn on dark mode in Chrome?", "How do I turn off dark mode in Chrome?", "on/off"),
    ("Who was the first woman in space?", "Who was the second woman in space?", "ordinal"),
    ("How long does a 3B model take to fine-tune?", "How long does a 13B model take to fine-tune?", "model size"),
    ("Does ibuprofen raise blood pressure?", "Does ibuprofen lower blood pressure?", "raise/lower"),
    ("Why is my dog eating grass?", "Why is my cat eating grass?", "animal"),
    ("Is Python faster than Java?", "Is Java faster than Python?", "swap around 'than'"),
    ("Can dogs eat grapes?", "Can dogs never eat grapes?", "never"),
    ("How many people live in New York?", "How many people live in New Jersey?", "entity"),
    ("What's the weather in Boston tomorrow?", "What's the weather in Boston today?", "today/tomorrow"),
    ("How do I run Llama 3 on a GPU?", "How do I run Llama 2 on a GPU?", "version number"),
    ("Is one glass of wine a day healthy?", "Is two glasses of wine a day healthy?", "one vs two"),
    ("When was the Eiffel Tower built?", "Why was the Eiffel Tower built?", "question word"),
    ("Can't I cancel my order?", "Can I cancel my order?", "contracted negation"),
    ("Translate good morning from German to Italian", "Translate good morning from Italian to German",
     "swap around 'from'/'to'"),
    ("Are all snakes venomous?", "Are some snakes venomous?", "quantifier"),
    ("Who was the president of France?", "Who is the president of France?", "tense: past vs present"),
    ("What is 12 + 7?", "What is 12 - 7?", "arithmetic operator"),
    ("What is (2 + 3) * 4?", "What is 2 + (3 * 4)?", "operator grouping"),
    ("Why does print(a) fail?", "Why does print(b) fail?", "single-letter name in code"),
    ("Cheap flights to Lisbon", "Cheap flights from Lisbon", "destination vs origin"),
    ("Who killed Caesar?", "Who was Caesar killed by?", "passive voice swaps the roles"),
    ("Is it -5 degrees outside?", "Is it 5 degrees outside?", "negative number"),
]

# Pairs a person would call paraphrases but the rules reject on purpose: a miss costs one student
# answer, a false hit serves a wrong one, so the rules stay conservative.
KNOWN_MISSES = [
    ("What causes thunder?", "Why does thunder happen?"),  # "happen" is a content word here
    ("How do I get a passport?", "What documents do I need to apply for a passport?"),  # a narrower question
    ("Can I take ibuprofen with alcohol?", "Is it dangerous to take ibuprofen with alcohol?"),  # polarity word
]


@pytest.mark.parametrize(("query", "candidate"), PARAPHRASES)
def test_paraphrases_pass_both_ways(query: str, candidate: str) -> None:
    forward, backward = check_match(query, candidate), check_match(candidate, query)
    assert forward.ok, forward.reason
    assert backward.ok, backward.reason


@pytest.mark.parametrize(("query", "candidate", "kind"), ONE_WORD_CHANGES)
def test_one_word_changes_are_rejected_both_ways(query: str, candidate: str, kind: str) -> None:
    forward, backward = check_match(query, candidate), check_match(candidate, query)
    assert not forward.ok, f"{kind}: {forward.reason}"
    assert not backward.ok, f"{kind}: {backward.reason}"
    assert forward.reason  # a rejection always says why (it is logged at debug level)


@pytest.mark.parametrize(("query", "candidate"), KNOWN_MISSES)
def test_known_conservative_misses(query: str, candidate: str) -> None:
    assert not check_match(query, candidate).ok


@pytest.mark.parametrize(("query", "candidate", "reason_start"), [
    ("What is 15% of 200?", "What is 15 percent of 300?", "numbers differ"),  # "percent" == "%"
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation differs"),
    ("How do I scroll up in vim?", "How do I scroll down in vim?", "direction/quantity words differ"),
    ("Who was the CEO of Apple?", "Who is the CEO of Apple?", "tense differs"),
    ("Evaluate 3 * 4", "Evaluate 3 / 4", "code/math differs"),
    ("Trains to Berlin", "Trains from Berlin", "direction differs"),
    ("Where was Mozart born?", "When was Mozart born?", "question words differ"),
    ("How do I convert Celsius to Kelvin?", "How do I convert Kelvin to Celsius?", "order differs"),
    ("How do I bake bread?", "How do I bake cookies?", "content words differ"),
])
def test_rejection_names_the_rule(query: str, candidate: str, reason_start: str) -> None:
    assert check_match(query, candidate).reason.startswith(reason_start)


def test_identical_and_case_or_punctuation_only_differences_match() -> None:
    assert check_match("What is DNA?", "What is DNA?").ok
    assert check_match("what is dna", "What is DNA???").ok  # case and punctuation carry no meaning here
    assert check_match("  How   do I\nboil an egg? ", "How do I boil an egg?").ok


_WORDS = st.sampled_from("how do i what is the not up down 7b 70b 3 three paris rome with without buy "
                         "purchase a an to from than cat dog never before after".split())
_SENTENCES = st.lists(_WORDS, min_size=1, max_size=10).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(_SENTENCES)
def test_a_sentence_always_matches_itself(text: str) -> None:
    assert check_match(text, text).ok


@settings(max_examples=200, deadline=None)
@given(_SENTENCES, _SENTENCES)
def test_check_is_symmetric(a: str, b: str) -> None:
    assert check_match(a, b).ok == check_match(b, a).ok


@settings(max_examples=200, deadline=None)
@given(_SENTENCES, st.integers(min_value=2, max_value=10_000))
def test_adding_a_number_never_matches(text: str, number: int) -> None:
    assert not check_match(text, f"{text} {number}").ok


# --- normalize_prompt -------------------------------------------------------------------------------

def test_normalize_single_user_turn_collapses_whitespace() -> None:
    assert normalize_prompt([{"role": "user", "content": "  How do\n I boil   an egg? "}]) == "How do I boil an egg?"


def test_normalize_puts_last_user_turn_first_and_keeps_context() -> None:
    # The question leads so the embedder's 256-token truncation cuts context, never the question.
    text = normalize_prompt([
        {"role": "system", "content": "You are a  chef."},
        {"role": "user", "content": "I have eggs."},
        {"role": "assistant", "content": "Great, what do you want to cook?"},
        {"role": "user", "content": "How long do I boil them?"},
    ])
    assert text.startswith("How long do I boil them?")
    assert "system: You are a chef." in text and "user: I have eggs." in text
    assert "Great" not in text  # assistant turns follow from the user turns


def test_normalize_context_changes_the_match() -> None:
    # Same last question under different system prompts must not share an answer.
    a = normalize_prompt([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}])
    b = normalize_prompt([{"role": "system", "content": "Answer in German."}, {"role": "user", "content": "Hi"}])
    assert not check_match(a, b).ok


def test_normalize_accepts_content_parts_and_skips_empty_turns() -> None:
    text = normalize_prompt([
        {"role": "system", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "DNA?"}]},
    ])
    assert text == "What is DNA?"


def test_normalize_without_user_turn_uses_what_there_is() -> None:
    assert normalize_prompt([{"role": "system", "content": "Be brief."}]) == "Be brief."
    assert normalize_prompt([]) == ""


# --- with the real embedder: verification is what stops these ---------------------------------------

@pytest.fixture(scope="module")
def embedder():
    from appliance.cache.embedder import load_embedder

    return load_embedder(None)


def _cosines(embedder, pairs: list[tuple[str, str]]) -> np.ndarray:
    left, right = embedder.embed([a for a, _ in pairs]), embedder.embed([b for _, b in pairs])
    return np.einsum("ij,ij->i", left, right)


def test_threshold_alone_would_serve_most_one_word_changes(embedder) -> None:
    threshold = CacheConfig().threshold
    cosines = _cosines(embedder, [(a, b) for a, b, _ in ONE_WORD_CHANGES])
    over = [pair for pair, c in zip(ONE_WORD_CHANGES, cosines) if c >= threshold]
    # Measured: the median one-word change scores above the threshold...
    assert len(over) >= len(ONE_WORD_CHANGES) // 2, f"only {len(over)} over {threshold}"
    assert float(np.median(cosines)) >= threshold
    # ...and verification rejects every one of them.
    assert [pair for pair in over if check_match(pair[0], pair[1]).ok] == []


def test_verification_keeps_paraphrases_that_clear_the_threshold(embedder) -> None:
    threshold = CacheConfig().threshold
    cosines = _cosines(embedder, PARAPHRASES)
    over = [pair for pair, c in zip(PARAPHRASES, cosines) if c >= threshold]
    assert len(over) >= len(PARAPHRASES) * 3 // 4
    assert all(check_match(a, b).ok for a, b in over)
