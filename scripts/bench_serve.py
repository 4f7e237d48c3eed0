#!/usr/bin/env python3
"""Many clients at once over the socket vs raw llama-cpp-python single-stream, in one run.

For 1, 2, 4, 8, 16 concurrent streaming clients (each asking its own questions, one after the
other, answers of 48 to 80 tokens so the clients do not move in lockstep): aggregate tokens/s,
per-client tokens/s, time to first token p50/p95 (also without each client's first request: those
arrive together, 20 ms apart, and on a CPU their prefills take turns). The baseline is raw llama-cpp-python
(`Llama.create_completion`, stream=True) answering the same prompts one at a time on the same
model and flash-attention setting, with 1 thread and with one per core; the better of the two
is the reference. Writes a table, a JSON file and a PNG plot.

    python scripts/bench_serve.py [--clients 1,2,4,8,16] [--requests 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from appliance.engine.model_source import embedded_quant, serve_embedded  # noqa: E402
from bench_daemon import _prompt_tokens, start_daemon  # noqa: E402

TOPICS = [
    "a lighthouse keeper and a storm", "a robot learning to paint", "the history of bread",
    "a city under the sea", "how bees make honey", "a journey across a desert", "the first winter on Mars",
    "a clockmaker's apprentice", "a lost dog finding home", "volcanoes and how they form",
    "a chess game between rivals", "the invention of the printing press", "a night market in Taipei",
    "an old library with a secret", "the life of a river", "a train that never stops",
    "the migration of whales", "a garden on a rooftop", "a violin with a history", "the northern lights",
]


def answer_length(client: int, i: int, base: int) -> int:
    """A fixed but varied answer length per request (base - 16 .. base + 16)."""
    return max(1, base - 16 + (client * 13 + i * 7) % 33)


def questions(client: int, count: int) -> list[list[dict]]:
    """Distinct long-answer questions per client, so no two concurrent requests are the same."""
    return [[{"role": "user", "content": f"Write a long story about {TOPICS[(client * 7 + i) % len(TOPICS)]}. "
                                          f"Number {client}-{i}."}] for i in range(count)]


@dataclass
class Request:
    tokens: int
    ttft_s: float
    total_s: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def ask(client: httpx.AsyncClient, messages: list[dict], max_tokens: int) -> Request:
    payload = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if first is None and '"content"' in line:
                first = time.perf_counter()
            if '"usage"' in line:
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
    ended = time.perf_counter()
    return Request(tokens, (first or ended) - started, ended - started)


async def phase(socket_path: Path, clients: int, requests: int, max_tokens: int) -> tuple[float, list[list[Request]]]:
    """`clients` concurrent clients, each asking `requests` questions in turn; returns wall time and results."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket_path), limits=limits),
                                 base_url="http://athanor", timeout=600) as client:
        async def one(c: int) -> list[Request]:
            await asyncio.sleep(0.02 * c)  # clients arrive a little apart, as real ones do
            return [await ask(client, messages, answer_length(c, i, max_tokens))
                    for i, messages in enumerate(questions(c, requests))]

        started = time.perf_counter()
        results = await asyncio.gather(*(one(c) for c in range(clients)))
        return time.perf_counter() - started, results


async def warm_up(socket_path: Path) -> None:
    """One short answer to a question no client asks, so no measured prompt finds its prefix cached."""
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
                                 base_url="http://athanor", timeout=600) as client:
        await ask(client, [{"role": "user", "content": "Say hello."}], 4)


def batching_stats(socket_path: Path) -> dict:
    """The daemon's own account of its decode steps (/v1/stats)."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://athanor") as client:
        return client.get("/v1/stats").json()["students"][0]["batching"]


def batching_delta(before: dict, after: dict) -> dict:
    """What one phase added: decode steps, sequences per step, steps cut short, prompt tokens reused."""
    counted = ("steps", "interrupted_steps", "prompt_tokens_reused", "prompt_tokens_computed")
    delta = {key: (after[key] or 0) - (before[key] or 0) for key in counted}
    stepped = (after["mean_batch"] or 0) * after["steps"] - (before["mean_batch"] or 0) * before["steps"]
    delta["mean_batch"] = round(stepped / delta["steps"], 2) if delta["steps"] else None
    return delta


def raw_baseline(model: Path, prompts: list[list[int]], max_tokens: int, threads: int, n_ctx: int,
                 flash_attn: str) -> dict:
    """Raw llama-cpp-python, one stream at a time: the figure batching has to beat."""
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                flash_attn=flash_attn == "on", verbose=False)
    try:
        list(llm.create_completion("Say hello.", max_tokens=4, temperature=0, stream=True))  # warm up, no shared prefix
        runs = []
        started = time.perf_counter()
        for i, prompt in enumerate(prompts):
            t0 = time.perf_counter()
            first = None
            tokens = 0
            for _ in llm.create_completion(prompt, max_tokens=answer_length(0, i, max_tokens), temperature=0,
                                           stream=True):
                first = first or time.perf_counter()
                tokens += 1
            runs.append(Request(tokens, (first or time.perf_counter()) - t0, time.perf_counter() - t0))
        wall = time.perf_counter() - started
    finally:
        llm.close()
    return summarise(wall, [runs], 1)


def summarise(wall: float, results: list[list[Request]], clients: int) -> dict:
    flat = [r for client in results for r in client]
    tokens = sum(r.tokens for r in flat)
    ttfts = [r.ttft_s * 1000 for r in flat]
    later = [r.ttft_s * 1000 for client in results for r in client[1:]]
    per_client = [sum(r.tokens for r in client) / sum(r.total_s for r in client) for client in results]
    return {
        "clients": clients,
        "requests": len(flat),
        "tokens": tokens,
        "wall_s": wall,
        "aggregate_tokens_per_s": tokens / wall,
        "per_client_tokens_per_s": statistics.median(per_client),
        "ttft_ms_p50": percentile(ttfts, 0.5),
        "ttft_ms_p95": percentile(ttfts, 0.95),
        # Each client's first request arrives in a burst with all the others' (20 ms apart), and on a
        # CPU their prefills take turns; the later requests arrive one by one, as a family's would.
        "ttft_ms_p95_after_first": percentile(later, 0.95) if later else None,
        "ttft_ms_by_client": [[round(r.ttft_s * 1000, 1) for r in client] for client in results],
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["daemon"]
    xs = [r["clients"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [r["aggregate_tokens_per_s"] for r in rows], "o-", label="daemon, aggregate")
    left.plot(xs, [r["per_client_tokens_per_s"] for r in rows], "s--", label="daemon, per client")
    left.axhline(summary["raw"]["aggregate_tokens_per_s"], color="grey", linestyle=":",
                 label="raw llama-cpp-python, one stream")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("tokens/s")
    left.legend()
    right.plot(xs, [r["ttft_ms_p50"] for r in rows], "o-", label="p50")
    right.plot(xs, [r["ttft_ms_p95"] for r in rows], "s-", label="p95")
    right.axhline(summary["raw"]["ttft_ms_p50"], color="grey", linestyle=":", label="raw, p50")
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent clients")
    right.set_ylabel("time to first token (ms)")
    right.legend()
    fig.suptitle(f"{Path(summary['model']).name} on {summary['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def device_name() -> str:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return "GPU (llama.cpp built with GPU offload)"
    return f"CPU, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: embedded SmolLM2-135M)")
    parser.add_argument("--clients", default="1,2,4,8,16")
    parser.add_argument("--requests", type=int, default=3, help="questions each client asks, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--quant", default=None, help="copy of the embedded default to serve (f16, q8_0, q4_1, "
                        "q4_0; default: the daemon's choice for --parallel)")
    parser.add_argument("--parallel", type=int, default=8, help="[student].parallel of the daemon")
    parser.add_argument("--threads", type=int, default=0, help="daemon's [student].n_threads (0: its default)")
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--flash-attn", choices=["on", "off"], default="on")
    parser.add_argument("--prompts-first", choices=["on", "off"], default="on", help="[student].prompts_first")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "serve.json")
    args = parser.parse_args()
    # The daemon's own default for this `parallel`: the embedded student converted to F16 when
    # requests are batched, Q8_0 when not (see [student].quant); --quant picks another copy.
    model = args.model or serve_embedded(embedded_quant(args.quant, args.parallel), ROOT / "bench-out" / "models")
    counts = [int(c) for c in args.clients.split(",")]
    console = Console(width=160)

    baseline_prompts = _prompt_tokens(model, questions(0, max(4, args.requests)))
    raws = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        console.print(f"raw llama-cpp-python, one stream, {threads} thread(s) ...")
        raws[threads] = raw_baseline(model, baseline_prompts, args.max_tokens, threads, args.n_ctx, args.flash_attn)
    best_threads = max(raws, key=lambda t: raws[t]["aggregate_tokens_per_s"])
    raw = {**raws[best_threads], "threads": best_threads}
    rows = []
    os.environ["ATHANOR_STUDENT__PARALLEL"] = str(args.parallel)
    os.environ["ATHANOR_STUDENT__PROMPTS_FIRST"] = "true" if args.prompts_first == "on" else "false"
    os.environ["ATHANOR_SERVER__MAX_QUEUE"] = str(max(64, max(counts) * 2))
    with tempfile.TemporaryDirectory() as home:
        process, socket_path = start_daemon(Path(home), model, args.n_ctx, args.threads, args.flash_attn, "off")
        try:
            asyncio.run(warm_up(socket_path))
            for clients in counts:
                console.print(f"{clients} concurrent client(s) ...")
                before = batching_stats(socket_path)
                wall, results = asyncio.run(phase(socket_path, clients, args.requests, args.max_tokens))
                rows.append({**summarise(wall, results, clients),
                             "batching": batching_delta(before, batching_stats(socket_path))})
        finally:
            process.terminate()
            process.wait(30)

    daemon_threads = args.threads or os.cpu_count() or 1
    summary = {"model": str(model), "device": device_name(), "threads": daemon_threads, "parallel": args.parallel,
               "max_tokens": args.max_tokens, "requests_per_client": args.requests, "flash_attn": args.flash_attn,
               "prompts_first": args.prompts_first,
               "raw": raw, "raw_by_threads": raws, "daemon": rows}
    table = Table(title=f"{model.name}: {summary['device']}, daemon {daemon_threads} thread(s), parallel "
                        f"{args.parallel}, {args.max_tokens}±16 tokens per answer")
    for column in ("clients", "requests", "aggregate tok/s", "x raw", "per-client tok/s", "TTFT p50 ms",
                   "TTFT p95 ms", "p95 / 1-client p95", "p95 after first", "/ 1-client"):
        table.add_column(column, justify="right")
    for threads, r in raws.items():
        table.add_row(f"raw, {threads}t", str(r["requests"]), f"{r['aggregate_tokens_per_s']:.1f}",
                      f"{r['aggregate_tokens_per_s'] / raw['aggregate_tokens_per_s']:.2f}",
                      f"{r['per_client_tokens_per_s']:.1f}", f"{r['ttft_ms_p50']:.0f}", f"{r['ttft_ms_p95']:.0f}", "",
                      "", "")
    single_p95 = next((r["ttft_ms_p95"] for r in rows if r["clients"] == 1), None)
    single_later = next((r["ttft_ms_p95_after_first"] for r in rows if r["clients"] == 1), None)
    for r in rows:
        r["speedup_vs_raw"] = r["aggregate_tokens_per_s"] / raw["aggregate_tokens_per_s"]
        r["ttft_p95_vs_single"] = r["ttft_ms_p95"] / single_p95 if single_p95 else None
        later = r["ttft_ms_p95_after_first"]
        r["ttft_p95_after_first_vs_single"] = later / single_later if later and single_later else None
        table.add_row(str(r["clients"]), str(r["requests"]), f"{r['aggregate_tokens_per_s']:.1f}",
                      f"{r['speedup_vs_raw']:.2f}", f"{r['per_client_tokens_per_s']:.1f}", f"{r['ttft_ms_p50']:.0f}",
                      f"{r['ttft_ms_p95']:.0f}", f"{r['ttft_p95_vs_single']:.2f}" if single_p95 else "",
                      f"{later:.0f}" if later else "",
                      f"{r['ttft_p95_after_first_vs_single']:.2f}" if r["ttft_p95_after_first_vs_single"] else "")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    png = args.out.with_suffix(".png")
    plot(summary, png)
    console.print(f"written {args.out} and {png}")


if __name__ == "__main__":
    main()
