#!/usr/bin/env python3
"""What KV prefix reuse does to batched decoding (issue #7's open question), engine alone, no HTTP.

Rounds of 8 prompts decoded together on one `LlamaEngine`. With `--mode keep` each round reuses
the cached prefix its slot shares with the last round's prompt (what the daemon does); with
`--mode clear` every KV stream is emptied first, so each prompt is computed whole. Per round it
prints tokens/s, the median decode step, and how long `llama_decode` itself took.

    python scripts/bench_prefix_reuse.py --model MODEL.gguf --mode keep --system-rules 0

Measured on the 2-core CPU (2026-11-23, SmolLM2-135M, 64-token answers): after the first round,
`keep` makes every decode step slower, F16 37 -> ~90 ms and Q4_1 49 -> ~65 ms, all inside
`llama_decode`; `clear` keeps the first round's speed. The cause inside llama.cpp's per-sequence
KV streams is not found yet.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402

import appliance.engine.llama as llama_engine  # noqa: E402
from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.engine.types import SamplingParams  # noqa: E402

TOPICS = ["a lighthouse keeper", "a robot painter", "bread", "a sea city", "bees", "a desert", "Mars", "a clock"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--mode", choices=["keep", "clear"], default="keep")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--system-rules", type=int, default=0, help="lengthen the shared system prompt (~12 tokens each)")
    args = parser.parse_args()

    decode_s = [0.0]
    real_decode = llama_cpp.llama_decode

    def timed_decode(*call):
        started = time.perf_counter()
        try:
            return real_decode(*call)
        finally:
            decode_s[0] += time.perf_counter() - started

    llama_engine.llama_cpp.llama_decode = timed_decode
    engine = llama_engine.LlamaEngine(args.model or embedded_student_path(), "probe", n_ctx=args.n_ctx,
                                      n_threads=args.threads, parallel=len(TOPICS))
    params = SamplingParams(max_tokens=64, temperature=0)
    system = "You are a storyteller. " + " ".join(f"Rule {k}: keep sentences short and vivid."
                                                  for k in range(args.system_rules))
    for round_no in range(args.rounds):
        prompts = [engine.chat_prompt([{"role": "system", "content": system},
                                       {"role": "user", "content": f"Round {round_no}. Write a long story about {t}."}])
                   for t in TOPICS]
        if args.mode == "clear":
            for seq in range(engine.parallel):
                llama_cpp.llama_memory_seq_rm(engine._memory, seq, -1, -1)
                engine._kv[seq] = []
        reused_before = engine.prompt_tokens_reused
        active = {engine.add(prompt, params) for prompt in prompts}
        decode_s[0] = 0.0
        steps: list[float] = []
        tokens = 0
        started = time.perf_counter()
        while active:
            step_started = time.perf_counter()
            results = engine.step()
            steps.append(time.perf_counter() - step_started)
            for result in results:
                tokens += result.event is not None
                if result.finish is not None or result.error is not None:
                    active.discard(result.seq)
                    engine.remove(result.seq)
        elapsed = time.perf_counter() - started
        print(f"round {round_no}: {tokens / elapsed:6.1f} tok/s, {len(steps)} steps, median step "
              f"{statistics.median(steps) * 1000:5.1f} ms, llama_decode {decode_s[0]:.2f} of {elapsed:.2f} s, "
              f"prompt tokens reused {engine.prompt_tokens_reused - reused_before}")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
