#!/usr/bin/env python3
"""Soak test: many clients on the socket for a while, mixing cached, student and teacher answers,
streams, clients that leave mid-answer and bad requests; the daemon's memory and open files are
sampled throughout.

    .venv/bin/python scripts/soak.py --minutes 10 --clients 24     # a daemon of its own, fake Gemini teacher
    .venv/bin/python scripts/soak.py --socket /run/athanor/athanor.sock --pid PID --minutes 60

Prints a report (requests by route and outcome, errors, RSS and fd counts over time) and writes it
as JSON with `--out`. `tests/test_soak.py` runs the same driver for a minute and asserts on it.
The only answers counted as acceptable failures are the documented ones: 503 + Retry-After when
the queue is full, and the 400s the bad requests are meant to get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

REPEATED = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is grass?",
    "Name the largest ocean on Earth.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is two plus two?",
    "What planet do we live on?",
]
TOPICS = ["otters", "volcanoes", "jazz", "bread", "glaciers", "chess", "comets", "bees", "bridges", "tea"]
BAD_BODIES = [
    b"{not json",
    b'{"messages": "hello"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}',
    b'{"messages": [{"role": "wizard", "content": "hi"}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b"\xff\xfe\x00garbage",
]


@dataclass
class Sample:
    t: float
    rss_bytes: int
    fds: int


@dataclass
class SoakReport:
    seconds: float = 0.0
    clients: int = 0
    requests: int = 0
    by_route: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    overloaded: int = 0
    abandoned: int = 0
    errors: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def as_dict(self) -> dict:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs.
        return {
            "seconds": self.seconds, "clients": self.clients, "requests": self.requests,
            "by_route": dict(self.by_route), "by_kind": dict(self.by_kind),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "overloaded": self.overloaded, "abandoned": self.abandoned, "errors": self.errors,
            "samples": [asdict(s) for s in self.samples],
            "rss_growth_bytes": self.rss_growth_bytes() if self.samples else None,
            "fd_growth": self.fd_growth() if self.samples else None,
        }

    # What the assertions and the printed report look at: growth after warm-up.
    def settled(self) -> tuple[list[Sample], list[Sample]]:
        """Samples of the first and last quarter after the first quarter (warm-up: models, caches, pools)."""
        n = len(self.samples)
        quarter = max(1, n // 4)
        return self.samples[quarter:2 * quarter], self.samples[-quarter:]

    def rss_growth_bytes(self) -> float:
        early, late = self.settled()
        return statistics.median(s.rss_bytes for s in late) - statistics.median(s.rss_bytes for s in early)

    def fd_growth(self) -> int:
        early, late = self.settled()
        return max(s.fds for s in late) - max(s.fds for s in early)


def sample_process(pid: int) -> Sample:
    rss = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return Sample(time.monotonic(), rss, len(os.listdir(f"/proc/{pid}/fd")))


async def _one(client: httpx.AsyncClient, rng: random.Random, serial: int, report: SoakReport, max_tokens: int) -> None:
    roll = rng.random()
    if roll < 0.35:
        kind, question = "repeat", rng.choice(REPEATED)
    elif roll < 0.85:
        kind, question = "fresh", f"In one sentence, tell me something about {rng.choice(TOPICS)} (#{serial})."
    elif roll < 0.92:
        kind, question = "abandon", f"Write a long story about {rng.choice(TOPICS)} number {serial}."
    else:
        kind, question = "bad", ""
    stream = kind == "abandon" or (kind == "fresh" and rng.random() < 0.3)
    report.by_kind[kind] += 1
    report.requests += 1
    if kind == "bad":
        body = rng.choice(BAD_BODIES)
        response = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        report.statuses[response.status_code] += 1
        if response.status_code != 400:
            report.errors.append(f"bad body {body[:40]!r} got {response.status_code}: {response.text[:200]}")
        return
    payload = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
               "stream": stream}
    if not stream:
        response = await client.post("/v1/chat/completions", json=payload)
        await _settle(response, report, kind)
        return
    async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        if response.status_code != 200:
            await response.aread()
            await _settle(response, report, kind)
            return
        report.statuses[200] += 1
        route = None
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                route = route or json.loads(line[6:]).get("route")
                if kind == "abandon":
                    report.abandoned += 1
                    return  # leaving mid-answer: the daemon must free the slot
        report.by_route[route or "?"] += 1


async def _settle(response: httpx.Response, report: SoakReport, kind: str) -> None:
    report.statuses[response.status_code] += 1
    if response.status_code == 200:
        report.by_route[response.json()["route"]] += 1
    elif response.status_code == 503 and response.headers.get("retry-after"):
        report.overloaded += 1
        await asyncio.sleep(min(float(response.headers["retry-after"]), 1.0))
    else:
        report.errors.append(f"{kind} got {response.status_code}: {response.text[:200]}")


async def soak(socket_path: Path, pid: int, seconds: float, clients: int = 16, max_tokens: int = 16,
               seed: int = 0, sample_every_s: float = 1.0, progress: bool = False) -> SoakReport:
    """Run `clients` concurrent clients against the daemon on `socket_path` for `seconds`."""
    report = SoakReport(clients=clients)
    deadline = time.monotonic() + seconds
    serial = iter(range(10**9))

    async def client_loop(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
        async with httpx.AsyncClient(transport=transport, base_url="http://athanor", timeout=120) as client:
            while time.monotonic() < deadline:
                try:
                    await _one(client, rng, next(serial), report, max_tokens)
                except httpx.HTTPError as exc:
                    report.errors.append(f"transport: {type(exc).__name__}: {exc}")

    async def sampler() -> None:
        while time.monotonic() < deadline:
            report.samples.append(sample_process(pid))
            if progress:
                s = report.samples[-1]
                print(f"\r\033[K{report.requests} requests, rss {s.rss_bytes / 2**20:.0f} MiB, {s.fds} fds, "
                      f"{len(report.errors)} errors", end="", file=sys.stderr, flush=True)
            await asyncio.sleep(sample_every_s)

    started = time.monotonic()
    await asyncio.gather(sampler(), *(client_loop(n) for n in range(clients)))
    report.samples.append(sample_process(pid))
    report.seconds = time.monotonic() - started
    if progress:
        print(file=sys.stderr)
    return report


def print_report(report: SoakReport) -> None:
    early, late = report.settled()
    print(f"{report.requests} requests from {report.clients} clients in {report.seconds:.0f} s "
          f"({report.requests / max(report.seconds, 1e-9):.1f}/s)")
    print(f"  kinds:    {dict(report.by_kind)}")
    print(f"  routes:   {dict(report.by_route)}")
    print(f"  statuses: {dict(report.statuses)}; overloaded (503 + Retry-After): {report.overloaded}; "
          f"left mid-answer: {report.abandoned}")
    print(f"  errors:   {len(report.errors)}" + "".join(f"\n    {e}" for e in report.errors[:10]))
    print(f"  rss:      {early[0].rss_bytes / 2**20:.1f} MiB after warm-up -> {late[-1].rss_bytes / 2**20:.1f} MiB "
          f"(median growth {report.rss_growth_bytes() / 2**20:+.1f} MiB)")
    print(f"  fds:      {early[0].fds} after warm-up -> {late[-1].fds} (growth {report.fd_growth():+d})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--socket", type=Path, help="soak a running daemon (with --pid) instead of starting one")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.socket:
        if not args.pid:
            parser.error("--socket needs --pid (to sample the daemon's memory and open files)")
        report = asyncio.run(soak(args.socket, args.pid, args.minutes * 60, args.clients, args.max_tokens,
                                  progress=True))
    else:
        sys.path.insert(0, str(ROOT))
        from tests.fakes import FakeGemini
        from tests.soak_daemon import soak_daemon

        with FakeGemini(api_key="soak-key", answer=lambda p: f"Teacher says: {p[-50:]}") as fake, \
                tempfile.TemporaryDirectory() as home, soak_daemon(Path(home), fake) as (process, path):
            report = asyncio.run(soak(path, process.pid, args.minutes * 60, args.clients, args.max_tokens,
                                      progress=True))
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report.as_dict(), indent=1))
    return 0 if not report.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
