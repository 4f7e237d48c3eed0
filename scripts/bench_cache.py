#!/usr/bin/env python3
"""Semantic cache benchmark: does verification stop false hits, and how fast is a lookup at scale?

(1) Quality, on pairs written below: true paraphrases (should hit) and one-word changes (must not hit:
    numbers, model sizes, negations, entities, directions, swaps, objects, question words...). Reports
    the cosine medians of both sets, and true-hit / false-hit rates for the plain threshold and for
    threshold + `check_match`.
(2) Latency of `SemanticCache.lookup` (miss and hit) at 1k / 100k / 1M entries; filler entries are
    random unit vectors bulk-inserted (1M x 384 x 4 B = 1.5 GB of vectors, ~4-5 GB peak with SQLite).

    python scripts/bench_cache.py [--sizes 1000,100000,1000000] [--queries 200] [--skip-latency]
                                  [--out bench-out/cache.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from tqdm import tqdm  # noqa: E402

from appliance.cache.embedder import Embedder, load_embedder  # noqa: E402
from appliance.cache.store import CacheKey, SemanticCache  # noqa: E402
from appliance.cache.verify import check_match  # noqa: E402
from appliance.config import CacheConfig  # noqa: E402

# True paraphrases: the same question, so the same answer may be served.
PARAPHRASES: list[tuple[str, str]] = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("How do I boil an egg?", "What is the best way to boil an egg?"),
    ("Can I take ibuprofen with alcohol?", "Is it safe to take ibuprofen with alcohol?"),
    ("How do I convert a list to a string in Python?", "How can I turn a list into a string in Python?"),
    ("What is the boiling point of water?", "At what temperature does water boil?"),
    ("How many legs does a spider have?", "How many legs do spiders have?"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("What is the speed of light?", "How fast does light travel?"),
    ("How do I make pancakes?", "What's a good recipe for pancakes?"),
    ("How do I center a div in CSS?", "How can I center a div using CSS?"),
    ("What time is it in Tokyo?", "What is the current time in Tokyo?"),
    ("How do I delete a file in Linux?", "How can I remove a file on Linux?"),
    ("What is the population of Canada?", "How many people live in Canada?"),
    ("Why is the sky blue?", "What makes the sky blue?"),
    ("How do I buy a car?", "How do I purchase a car?"),
    ("What is the largest planet in the solar system?", "Which planet is the biggest in our solar system?"),
    ("How do I install Python on Windows?", "How can I install Python on Windows?"),
    ("What are the symptoms of the flu?", "What are common flu symptoms?"),
    ("How long should I cook rice?", "How long does it take to cook rice?"),
    ("What's the weather like in London today?", "How is the weather in London today?"),
    ("Translate 'good morning' into Spanish", "How do you say 'good morning' in Spanish?"),
    ("What does DNA stand for?", "What is DNA short for?"),
    ("How do I lose weight fast?", "What's the quickest way to lose weight?"),
    ("Is coffee bad for you?", "Is coffee unhealthy?"),
    ("How do I fix a flat tire?", "How can I repair a flat tyre?"),
    ("What is machine learning?", "Can you explain what machine learning is?"),
    ("How many ounces are in a pound?", "How many ounces make up one pound?"),
    ("What is the meaning of life?", "What's the meaning of life?"),
    ("How do I make a cup of tea?", "How do you make a cup of tea?"),
    ("What is the distance from the Earth to the Moon?", "How far is the Moon from the Earth?"),
    ("How do I undo the last git commit?", "How can I revert my most recent git commit?"),
    ("What is the best programming language for beginners?", "Which programming language is best for beginners?"),
    ("How do I sort a dictionary by value in Python?", "How can I sort a Python dict by its values?"),
    ("What causes headaches?", "Why do people get headaches?"),
    ("How much water should I drink per day?", "How much water should I drink each day?"),
    ("How do I cancel my subscription?", "How can I cancel my subscription?"),
    ("Where is the Eiffel Tower located?", "Where is the Eiffel Tower?"),
    ("What is the difference between a virus and a bacterium?", "How is a virus different from a bacterium?"),
    ("When was the Declaration of Independence signed?", "What year was the Declaration of Independence signed?"),
    ("How do I get rid of fruit flies?", "How can I get rid of fruit flies?"),
    ("What's a healthy breakfast?", "What is a healthy breakfast?"),
    ("How do I change a light bulb?", "How do I replace a light bulb?"),
    ("What is the tallest mountain in the world?", "Which mountain is the highest in the world?"),
    ("How do I stop my dog from barking?", "How can I get my dog to stop barking?"),
    ("What should I pack for a beach vacation?", "What should I bring on a beach holiday?"),
    ("How do I write a cover letter?", "How should I write a cover letter?"),
    ("Is it going to rain tomorrow?", "Will it rain tomorrow?"),
    ("What are the health benefits of green tea?", "What are the benefits of drinking green tea?"),
    ("How do I calculate the area of a circle?", "How do you find the area of a circle?"),
    ("What is the plural of mouse?", "What's the plural form of mouse?"),
    ("How do I take a screenshot on a Mac?", "How can I take a screenshot on my Mac?"),
    ("How do I clean a cast iron pan?", "What's the best way to clean a cast iron skillet?"),
    ("What is photosynthesis?", "Explain photosynthesis."),
    ("What is the square root of 144?", "What's the square root of 144?"),
    ("How old is the universe?", "What is the age of the universe?"),
    ("What do pandas eat?", "What is the diet of a panda?"),
    ("Can dogs eat chocolate?", "Is chocolate safe for dogs to eat?"),
    ("How do I improve my sleep?", "How can I sleep better?"),
    ("Recommend a good book about history", "Can you suggest a good history book?"),
    ("What is the freezing point of water in Fahrenheit?", "At what temperature in Fahrenheit does water freeze?"),
    ("How do I learn to play guitar?", "How can I learn guitar?"),
    ("How do I create a virtual environment in Python?", "How can I make a Python virtual environment?"),
    ("What is the fastest land animal?", "Which land animal is the fastest?"),
    ("What does HTTP stand for?", "What is the full form of HTTP?"),
    ("How to start a vegetable garden?", "How do I begin a vegetable garden?"),
    ("What are some tips for public speaking?", "Give me some tips for public speaking."),
    ("How do I merge two branches in git?", "How can I merge 2 git branches?"),
    ("What is the chemical symbol for gold?", "What's gold's chemical symbol?"),
    ("Who painted the Mona Lisa?", "Who was the painter of the Mona Lisa?"),
    ("How can I speed up my computer?", "How do I make my computer faster?"),
    ("What is the best way to store fresh herbs?", "How should I store fresh herbs?"),
    ("How many calories are in an egg?", "How many calories does one egg have?"),
    ("How do I check my IP address?", "How can I find my IP address?"),
    ("What is the exchange rate from dollars to euros?", "What's the dollar to euro exchange rate?"),
    # looser rewordings, as real users write them
    ("How do I get a passport?", "What's the process for getting a passport?"),
    ("I can't sleep at night, what should I do?", "What can I do about insomnia?"),
    ("What's a good laptop for programming?", "Which laptop should I buy for coding?"),
    ("How do I say thank you in Japanese?", "What is thank you in Japanese?"),
    ("What are the side effects of aspirin?", "Does aspirin have side effects?"),
    ("How do I make my houseplants grow faster?", "How can I help my indoor plants grow quicker?"),
    ("What is the best way to learn a new language?", "How should I go about learning a foreign language?"),
    ("Why does my phone battery drain so fast?", "Why is my phone's battery dying quickly?"),
    ("How do I know if an egg is bad?", "How can I tell whether an egg has gone off?"),
    ("How long do cats live?", "What is the lifespan of a cat?"),
    ("What's the easiest way to get rid of hiccups?", "How do I stop hiccups?"),
    ("How do I write a for loop in Python?", "What's the syntax for a for loop in Python?"),
    ("Where can I watch the Olympics online?", "How can I stream the Olympics?"),
    ("Is it normal for my dog to sleep all day?", "Why does my dog sleep all day?"),
    ("How many hours of sleep do adults need?", "How much sleep does an adult need?"),
    ("What's the best way to cook salmon?", "How should I cook salmon?"),
    ("How do I renew my driver's license?", "What do I need to do to renew my driving licence?"),
    ("Can you recommend a good sci-fi novel?", "What's a good science fiction book to read?"),
    ("How do I get my baby to sleep through the night?", "How can I help my infant sleep all night?"),
    ("What's the fastest way to cool down a room?", "How can I quickly cool a room?"),
]

# One-word changes: the nearest neighbour is close in embedding space but the answer differs.
ONE_WORD_CHANGES: list[tuple[str, str, str]] = [
    # numbers
    ("number", "How many calories are in 2 eggs?", "How many calories are in 3 eggs?"),
    ("number", "What is 15% of 200?", "What is 15% of 300?"),
    ("number", "Convert 5 miles to kilometers", "Convert 50 miles to kilometers"),
    ("number", "What happened in 1969?", "What happened in 1989?"),
    ("number", "Is it safe to take two aspirin?", "Is it safe to take ten aspirin?"),
    ("number", "What was life like in the 1920s?", "What was life like in the 1960s?"),
    ("number", "What is the boiling point of water at 1000 meters?", "What is the boiling point of water at 3000 meters?"),
    ("number", "Give me 3 tips for studying", "Give me 5 tips for studying"),
    ("number", "Is 17 a prime number?", "Is 21 a prime number?"),
    ("number", "What are the new features in Python 3.11?", "What are the new features in Python 3.12?"),
    ("number", "How many calories does one egg have?", "How many calories do two eggs have?"),
    # model sizes
    ("model size", "How much RAM do I need to run a 7B model?", "How much RAM do I need to run a 70B model?"),
    ("model size", "Can a 13B model run on a laptop?", "Can a 1.3B model run on a laptop?"),
    ("model size", "How fast is Llama 3 8B on a CPU?", "How fast is Llama 3 405B on a CPU?"),
    ("model size", "What is the context length of GPT-4?", "What is the context length of GPT-3?"),
    ("model size", "How much VRAM does a 4-bit quantized model use?", "How much VRAM does an 8-bit quantized model use?"),
    ("model size", "Does a 24GB GPU fit a 30B model?", "Does a 12GB GPU fit a 30B model?"),
    # negations
    ("negation", "Can I take ibuprofen with alcohol?", "Can I take ibuprofen without alcohol?"),
    ("negation", "Is it safe to eat raw chicken?", "Is it not safe to eat raw chicken?"),
    ("negation", "Why do cats purr?", "Why don't cats purr?"),
    ("negation", "Which fruits are good for diabetics?", "Which fruits are not good for diabetics?"),
    ("negation", "Should I use a VPN?", "Should I never use a VPN?"),
    ("negation", "Can you cook pasta with salt?", "Can you cook pasta without salt?"),
    ("negation", "What happens if you don't sleep?", "What happens if you sleep?"),
    ("negation", "Is coffee a diuretic?", "Is coffee not a diuretic?"),
    ("negation", "Why can penguins fly?", "Why can't penguins fly?"),
    ("negation", "Which countries require a visa for US citizens?", "Which countries do not require a visa for US citizens?"),
    # entities
    ("entity", "What is the capital of Australia?", "What is the capital of Austria?"),
    ("entity", "What is the best time to visit Paris?", "What is the best time to visit Rome?"),
    ("entity", "Who is the president of France?", "Who is the president of Brazil?"),
    ("entity", "How do I install Python on Windows?", "How do I install Python on Linux?"),
    ("entity", "How do I reverse a list in Python?", "How do I reverse a list in JavaScript?"),
    ("entity", "What is the population of Tokyo?", "What is the population of Osaka?"),
    ("entity", "When did Napoleon die?", "When did Caesar die?"),
    ("entity", "How tall is Mount Everest?", "How tall is Mount Kilimanjaro?"),
    ("entity", "What is the currency of Japan?", "What is the currency of China?"),
    ("entity", "How do I sort a dictionary in Python?", "How do I sort a dictionary in Ruby?"),
    ("entity", "What is the time zone of New York?", "What is the time zone of New Delhi?"),
    ("entity", "Who wrote Hamlet?", "Who wrote Macbeth?"),
    ("entity", "Is it cheaper to fly on Tuesday?", "Is it cheaper to fly on Friday?"),
    # directions and antonyms
    ("direction", "Should I turn the thermostat up at night?", "Should I turn the thermostat down at night?"),
    ("direction", "Should I eat before a workout?", "Should I eat after a workout?"),
    ("direction", "How do I increase my credit score?", "How do I decrease my credit score?"),
    ("direction", "Why do I feel more tired in winter?", "Why do I feel less tired in winter?"),
    ("direction", "What is the maximum dose of acetaminophen?", "What is the minimum dose of acetaminophen?"),
    ("direction", "What happens when blood pressure is above normal?", "What happens when blood pressure is below normal?"),
    ("direction", "Who was the first man on the moon?", "Who was the last man on the moon?"),
    ("direction", "How do I scroll up in tmux?", "How do I scroll down in tmux?"),
    ("direction", "Why are interest rates rising?", "Why are interest rates falling?"),
    ("direction", "How can I lower my cholesterol?", "How can I raise my cholesterol?"),
    ("direction", "What's the highest paying job?", "What's the lowest paying job?"),
    ("direction", "How do I zoom in on a Mac?", "How do I zoom out on a Mac?"),
    ("direction", "Is it better to sleep on your left side?", "Is it better to sleep on your right side?"),
    ("direction", "Is the stock market open today?", "Is the stock market open tomorrow?"),
    ("direction", "How do I make my code run faster?", "How do I make my code run slower?"),
    ("direction", "Why is my laptop running hot?", "Why is my laptop running cold?"),
    ("direction", "Is red meat healthy?", "Is red meat unhealthy?"),
    ("direction", "Are all mushrooms poisonous?", "Are some mushrooms poisonous?"),
    # swapped roles
    ("swap", "How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?"),
    ("swap", "Translate hello from English to French", "Translate hello from French to English"),
    ("swap", "How do I get from London to Paris by train?", "How do I get from Paris to London by train?"),
    ("swap", "Is a cat bigger than a dog?", "Is a dog bigger than a cat?"),
    # objects
    ("object", "Can I take ibuprofen with alcohol?", "Can I take ibuprofen with coffee?"),
    ("object", "How do I remove a red wine stain?", "How do I remove a coffee stain?"),
    ("object", "Is it safe to give dogs grapes?", "Is it safe to give dogs apples?"),
    ("object", "How long should I boil potatoes?", "How long should I boil carrots?"),
    ("object", "What's the best way to learn piano?", "What's the best way to learn violin?"),
    ("object", "How do I reset my iPhone?", "How do I reset my router?"),
    ("object", "Is it safe to eat eggs during pregnancy?", "Is it safe to eat sushi during pregnancy?"),
    ("object", "How do I unclog a kitchen sink?", "How do I unclog a bathroom sink?"),
    ("object", "What should I wear in summer?", "What should I wear in winter?"),
    ("object", "What is the fastest way to learn Spanish?", "What is the cheapest way to learn Spanish?"),
    # question words
    ("question word", "When was the Eiffel Tower built?", "Why was the Eiffel Tower built?"),
    ("question word", "Where was Einstein born?", "When was Einstein born?"),
    ("question word", "How did the dinosaurs die?", "When did the dinosaurs die?"),
    # tense, arithmetic, origin vs destination
    ("tense", "Who was the CEO of Twitter?", "Who is the CEO of Twitter?"),
    ("arithmetic", "What is 144 / 12?", "What is 144 * 12?"),
    ("origin/destination", "How much is a flight to Tokyo?", "How much is a flight from Tokyo?"),
]


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _cosines(embedder: Embedder, pairs: list[tuple[str, str]]) -> np.ndarray:
    left = embedder.embed([a for a, _ in pairs])
    right = embedder.embed([b for _, b in pairs])
    return np.einsum("ij,ij->i", left, right)


def quality(embedder: Embedder, threshold: float) -> dict:
    """Hit rates on both sets with and without verification (symmetric: each pair checked both ways)."""
    para_cos = _cosines(embedder, PARAPHRASES)
    change_pairs = [(a, b) for _, a, b in ONE_WORD_CHANGES]
    change_cos = _cosines(embedder, change_pairs)

    def verified(a: str, b: str) -> bool:
        return check_match(a, b).ok and check_match(b, a).ok

    para_verified = [verified(a, b) for a, b in PARAPHRASES]
    change_verified = [verified(a, b) for a, b in change_pairs]
    para_plain = para_cos >= threshold
    change_plain = change_cos >= threshold
    para_both = para_plain & np.array(para_verified)
    change_both = change_plain & np.array(change_verified)
    false_hits = [
        {"kind": kind, "a": a, "b": b, "cosine": round(float(c), 4)}
        for (kind, a, b), c, ok in zip(ONE_WORD_CHANGES, change_cos, change_both) if ok
    ]
    lost = [
        {"a": a, "b": b, "cosine": round(float(c), 4), "reason": check_match(a, b).reason}
        for (a, b), c, plain, ok in zip(PARAPHRASES, para_cos, para_plain, para_both) if plain and not ok
    ]
    return {
        "threshold": threshold,
        "paraphrase_pairs": len(PARAPHRASES),
        "one_word_change_pairs": len(ONE_WORD_CHANGES),
        "cosine_median_paraphrase": round(_median(para_cos.tolist()), 4),
        "cosine_median_one_word_change": round(_median(change_cos.tolist()), 4),
        "plain": {"true_hit_rate": round(float(para_plain.mean()), 4),
                  "false_hit_rate": round(float(change_plain.mean()), 4)},
        "verified": {"true_hit_rate": round(float(para_both.mean()), 4),
                     "false_hit_rate": round(float(change_both.mean()), 4)},
        "verify_alone": {"paraphrases_passing": round(float(np.mean(para_verified)), 4),
                         "one_word_changes_passing": round(float(np.mean(change_verified)), 4)},
        "false_hits_with_verification": false_hits,
        "paraphrase_hits_lost_to_verification": lost,
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def latency(embedder: Embedder, size: int, queries: int, folder: Path, console: Console) -> dict:
    """Fill a cache with `size` random unit vectors (+ a few real entries), then time lookups."""
    cfg = CacheConfig(max_entries=max(size * 2, 10), ttl_s=10 * 365 * 24 * 3600.0)
    key = CacheKey("bench", "student-v1", "default")
    db = folder / f"cache-{size}.sqlite3"
    cache = SemanticCache(db, embedder, cfg)
    rng = np.random.default_rng(size)
    real = [a for a, _ in PARAPHRASES][:queries]
    cache.bulk_insert(key, real, [f"answer {i}" for i in range(len(real))], embedder.embed(real))
    filler = size - len(real)
    chunk = 50_000
    t0 = time.perf_counter()
    with tqdm(total=filler, desc=f"fill {size:,}", unit="row", leave=False) as bar:
        done = 0
        while done < filler:
            n = min(chunk, filler - done)
            vectors = rng.standard_normal((n, embedder.dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            cache.bulk_insert(key, [f"filler {done + i}" for i in range(n)], ["-"] * n, vectors)
            done += n
            bar.update(n)
    fill_s = time.perf_counter() - t0
    cache.close()
    t0 = time.perf_counter()
    cache = SemanticCache(db, embedder, cfg)  # time the rebuild from SQLite, as the daemon would on start
    open_s = time.perf_counter() - t0

    # Trailing spaces embed identically but defeat the cache's recent-vector memo: every timed
    # lookup pays for its embedding, as a new request would.
    hit_prompts = [prompt + " " * (j // len(real) + 1) for j, prompt in
                   enumerate((real * (queries // max(len(real), 1) + 1))[:queries])]
    miss_prompts = [f"Unrelated question number {i} about the migration habits of {w}?"
                    for i, w in enumerate(["eels", "geese", "whales", "moths", "salmon"] * 100)]
    hit_ms, miss_ms, embed_ms = [], [], []
    for prompt in hit_prompts:
        start = time.perf_counter()
        found = cache.lookup(key, prompt)
        hit_ms.append((time.perf_counter() - start) * 1e3)
        assert found is not None, f"exact repeat missed: {prompt}"
    for prompt in miss_prompts[:queries]:
        start = time.perf_counter()
        cache.lookup(key, prompt)
        miss_ms.append((time.perf_counter() - start) * 1e3)
    for prompt in miss_prompts[:min(queries, 100)]:
        start = time.perf_counter()
        embedder.embed([prompt])
        embed_ms.append((time.perf_counter() - start) * 1e3)
    stats = cache.stats()
    cache.close()
    for path in folder.glob(f"cache-{size}.sqlite3*"):
        path.unlink()
    result = {
        "entries": size, "fill_s": round(fill_s, 2), "open_rebuild_s": round(open_s, 2),
        "bytes_on_disk": stats["bytes_on_disk"],
        "lookup_miss_ms": {"p50": round(_percentile(miss_ms, 50), 3), "p95": round(_percentile(miss_ms, 95), 3)},
        "lookup_hit_ms": {"p50": round(_percentile(hit_ms, 50), 3), "p95": round(_percentile(hit_ms, 95), 3)},
        "embed_only_ms": {"p50": round(_percentile(embed_ms, 50), 3), "p95": round(_percentile(embed_ms, 95), 3)},
    }
    console.log(f"{size:,} entries: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000",
                        help="comma-separated cache sizes for the latency part")
    parser.add_argument("--queries", type=int, default=200, help="lookups timed per size and kind")
    parser.add_argument("--threshold", type=float, default=CacheConfig().threshold)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="where the benchmark databases go")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "cache.json")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)  # logs and CI: no truncated columns

    embedder = load_embedder(None)
    result: dict = {"embedder": embedder.name, "cpu_count": os.cpu_count()}
    result["quality"] = q = quality(embedder, args.threshold)

    table = Table(title=f"One-word changes vs paraphrases (threshold {args.threshold})")
    for column in ("", "true-hit rate (paraphrases)", "false-hit rate (one-word changes)"):
        table.add_column(column)
    table.add_row("threshold only", f"{q['plain']['true_hit_rate']:.1%}", f"{q['plain']['false_hit_rate']:.1%}")
    table.add_row("threshold + verify", f"{q['verified']['true_hit_rate']:.1%}",
                  f"{q['verified']['false_hit_rate']:.1%}")
    console.print(table)
    console.print(f"cosine median: paraphrases {q['cosine_median_paraphrase']:.3f}, "
                  f"one-word changes {q['cosine_median_one_word_change']:.3f} "
                  f"({q['paraphrase_pairs']} / {q['one_word_change_pairs']} pairs)")
    for miss in q["false_hits_with_verification"]:
        console.print(f"[red]false hit[/red] {miss}")

    if not args.skip_latency:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        result["latency"] = []
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            for size in sizes:
                result["latency"].append(latency(embedder, size, args.queries, Path(folder), console))
        table = Table(title="lookup latency (ms, one query at a time, includes embedding)")
        for column in ("entries", "miss p50", "miss p95", "hit p50", "hit p95", "embed p50", "fill s", "open s"):
            table.add_column(column, justify="right", no_wrap=True, min_width=9 if column == "entries" else None)
        for row in result["latency"]:
            table.add_row(f"{row['entries']:,}", f"{row['lookup_miss_ms']['p50']:.2f}",
                          f"{row['lookup_miss_ms']['p95']:.2f}", f"{row['lookup_hit_ms']['p50']:.2f}",
                          f"{row['lookup_hit_ms']['p95']:.2f}", f"{row['embed_only_ms']['p50']:.2f}",
                          f"{row['fill_s']:.1f}", f"{row['open_rebuild_s']:.1f}")
        console.print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
