#!/usr/bin/env python3
"""Daemon vs raw llama-cpp-python on the same model, prompt and settings, in one run.

Reports, for one client: decode tokens/s through the socket (plain and streamed) as a ratio
of raw `Llama.create_completion`, and the latency the daemon adds to a one-token answer.

    python scripts/bench_daemon.py [--reps 5] [--max-tokens 128] [--out bench-out/daemon.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from llama_cpp import Llama
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.defaults import embedded_student_path  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


def start_daemon(home: Path, model: Path, n_ctx: int, threads: int, flash_attn: str,
                 cache: str) -> tuple[subprocess.Popen, Path]:
    env = {
        **os.environ,
        "ATHANOR_HOME": str(home),
        "ATHANOR_STUDENT__PATH": str(model),
        "ATHANOR_STUDENT__N_CTX": str(n_ctx),
        "ATHANOR_STUDENT__N_THREADS": str(threads),
        "ATHANOR_STUDENT__FLASH_ATTN": flash_attn,
        # Every distinct question is a cache miss here: "on" measures what a miss's lookup adds.
        "ATHANOR_CACHE__ENABLED": "true" if cache == "on" else "false",
    }
    process = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    socket_path = home / "run" / "athanor.sock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if socket_path.exists():
            return process, socket_path
        time.sleep(0.05)
    process.kill()
    raise SystemExit("daemon did not start")


def one_token_messages(i: int) -> list[dict]:
    # A new question each time: both sides reuse the shared prefix and must decode the new suffix.
    return [{"role": "user", "content": f"Question {i}: is {i} an even number?"}]


def daemon_run(client: httpx.Client, max_tokens: int, stream: bool, messages: list[dict] = MESSAGES) -> tuple[int, float]:
    payload = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
               "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    if not stream:
        response = client.post("/v1/chat/completions", json=payload)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"], time.perf_counter() - started
    tokens = 0
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - started


def raw_stream_run(llm: Llama, prompt: list[int], max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = sum(1 for _ in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True))
    return tokens, time.perf_counter() - started


def raw_run(llm: Llama, prompt: list[int], max_tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0)
    return out["usage"]["completion_tokens"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: embedded SmolLM2-135M)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--flash-attn", choices=["on", "off"], default="off")
    parser.add_argument("--cache", choices=["on", "off"], default="on")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "daemon.json")
    args = parser.parse_args()
    model = args.model or embedded_student_path()
    console = Console()

    llm = Llama(str(model), n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                flash_attn=args.flash_attn == "on", verbose=False)
    with tempfile.TemporaryDirectory() as home:
        process, socket_path = start_daemon(Path(home), model, args.n_ctx, args.threads, args.flash_attn, args.cache)
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://a", timeout=600)
        try:
            # The daemon renders the chat template; use its exact prompt tokens for the raw runs.
            probe = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1}).json()
            prompt = _prompt_tokens(model, [MESSAGES])[0]
            assert len(prompt) == probe["usage"]["prompt_tokens"], "prompt mismatch between raw and daemon"
            results: dict[str, list[tuple[int, float]]] = {"raw": [], "raw_stream": [], "daemon": [],
                                                          "daemon_stream": [],
                                                          "raw_1tok": [], "daemon_1tok": []}
            raw_run(llm, prompt, 4)  # warm both sides
            daemon_run(client, 4, False)
            for _ in range(args.reps):  # interleaved so drift in machine load hits both alike
                results["raw"].append(raw_run(llm, prompt, args.max_tokens))
                results["daemon"].append(daemon_run(client, args.max_tokens, False))
                results["raw_stream"].append(raw_stream_run(llm, prompt, args.max_tokens))
                results["daemon_stream"].append(daemon_run(client, args.max_tokens, True))
            short = _prompt_tokens(model, [one_token_messages(i) for i in range(args.reps * 8)])
            for i in range(0, len(short), 2):  # alternate which side sees which question
                results["raw_1tok"].append(raw_run(llm, short[i], 1))
                results["daemon_1tok"].append(daemon_run(client, 1, False, one_token_messages(i + 1)))
        finally:
            client.close()
            process.terminate()
            process.wait(30)

    def tps(runs):
        return statistics.median(n / t for n, t in runs)

    def ms(runs):
        return statistics.median(t for _, t in runs) * 1000

    summary = {
        "model": str(model),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "reps": args.reps,
        "flash_attn": args.flash_attn,
        "cache": args.cache,
        "raw_tokens_per_s": tps(results["raw"]),
        "daemon_tokens_per_s": tps(results["daemon"]),
        "daemon_stream_tokens_per_s": tps(results["daemon_stream"]),
        "raw_1tok_ms": ms(results["raw_1tok"]),
        "daemon_1tok_ms": ms(results["daemon_1tok"]),
    }
    def paired_ratio(side, baseline):
        # Each daemon run is compared with the raw run next to it, so slow drifts in the
        # machine's load cancel out; the median of those ratios is the figure reported.
        pairs = zip(results[side], results[baseline])
        return statistics.median((n / t) / (rn / rt) for (n, t), (rn, rt) in pairs)

    summary["raw_stream_tokens_per_s"] = tps(results["raw_stream"])
    summary["ratio_daemon_vs_raw"] = paired_ratio("daemon", "raw")
    summary["ratio_stream_vs_raw"] = paired_ratio("daemon_stream", "raw")
    summary["ratio_stream_vs_raw_stream"] = paired_ratio("daemon_stream", "raw_stream")
    summary["added_latency_1tok_ms"] = summary["daemon_1tok_ms"] - summary["raw_1tok_ms"]

    table = Table(title=f"daemon vs raw llama-cpp-python ({model.name}, {args.threads} threads, "
                        f"{args.max_tokens} tokens, cache {args.cache}, median of {args.reps})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("raw llama-cpp-python tokens/s", f"{summary['raw_tokens_per_s']:.1f}")
    table.add_row("raw llama-cpp-python tokens/s (stream=True)", f"{summary['raw_stream_tokens_per_s']:.1f}")
    table.add_row("daemon tokens/s (plain)", f"{summary['daemon_tokens_per_s']:.1f}")
    table.add_row("daemon tokens/s (streamed)", f"{summary['daemon_stream_tokens_per_s']:.1f}")
    table.add_row("ratio daemon / raw (paired median)", f"{summary['ratio_daemon_vs_raw']:.3f}")
    table.add_row("ratio streamed / raw (paired median)", f"{summary['ratio_stream_vs_raw']:.3f}")
    table.add_row("ratio streamed / raw streamed (paired median)", f"{summary['ratio_stream_vs_raw_stream']:.3f}")
    table.add_row("one-token answer, raw ms", f"{summary['raw_1tok_ms']:.1f}")
    table.add_row("one-token answer, daemon ms", f"{summary['daemon_1tok_ms']:.1f}")
    table.add_row("added latency per request ms", f"{summary['added_latency_1tok_ms']:.1f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    console.print(f"written {args.out}")


def _prompt_tokens(model: Path, conversations: list[list[dict]]) -> list[list[int]]:
    """Prompt tokens exactly as the daemon renders them (its chat template and tokenizer)."""
    from appliance.engine.llama import LlamaEngine

    engine = LlamaEngine(model, "probe", n_ctx=256)
    try:
        return [engine.chat_prompt(messages) for messages in conversations]
    finally:
        engine.close()


if __name__ == "__main__":
    main()
