#!/usr/bin/env python3
"""What the daemon adds to a teacher's time to first token, and what escalating after the hold costs.

A fake Gemini server (tests/fakes, the real HTTP protocol) answers every question with the same words.
Measured, in one run, over N distinct questions each:

- **teacher alone**: the daemon's own Gemini client (`make_teacher`), in this process, streaming from
  the fake: the teacher's time to first token as the daemon sees it;
- **pre-routed**: through the daemon's socket with the shipped routers, which keep none of the embedded
  student's answers, `[routing].explore_share = 0`: the question goes to the teacher before any decode;
- **escalated**: a router that keeps answers but an early router that never does: the student decodes
  its `hold_tokens` (8) tokens, then the teacher is asked.

The issue's target: a teacher-routed answer's first token within the teacher's own plus 100 ms.

    python scripts/bench_teacher_ttft.py [--questions 40] [--out bench-out/teacher_ttft.json]
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.config import TeacherConfig  # noqa: E402
from appliance.routing.decide import early_path  # noqa: E402
from appliance.routing.learned import LogisticRouter  # noqa: E402
from appliance.routing.signals import Signals  # noqa: E402
from appliance.teacher.base import TeacherParams  # noqa: E402
from appliance.teacher.factory import make_teacher  # noqa: E402
from tests.conftest import gemini_env, start_daemon, stop_daemon  # noqa: E402
from tests.fakes import FakeGemini  # noqa: E402

WORDS = "Paris is the capital of France, on the Seine."
KEY = "bench-key"


def questions(n: int, tag: str) -> list[str]:
    # Distinct questions, so the cache answers none of them.
    return [f"In one sentence, what is notable about city number {i} ({tag})?" for i in range(n)]


def teacher_alone(fake: FakeGemini, n: int) -> list[float]:
    os.environ["ATHANOR_BENCH_GEMINI_KEY"] = KEY
    cfg = TeacherConfig(provider="gemini", model="gemini-2.5-flash", base_url=fake.url,
                        api_key_env="ATHANOR_BENCH_GEMINI_KEY", timeout_s=5)
    with tempfile.TemporaryDirectory() as state:
        teacher = make_teacher(cfg, Path(state))
        assert teacher is not None

        async def run() -> list[float]:
            out = []
            for question in questions(n, "alone"):
                started = time.perf_counter()
                first = None
                # Read to the end, as the daemon does: the connection then goes back to the pool for the next.
                async for chunk in teacher.stream([{"role": "user", "content": question}], TeacherParams(max_tokens=32)):
                    if first is None and chunk.text:
                        first = (time.perf_counter() - started) * 1000
                assert first is not None
                out.append(first)
            return out[3:]  # the first requests open the connection

        return asyncio.run(run())


def through_daemon(socket: Path, n: int, tag: str) -> list[float]:
    out = []
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://a", timeout=120) as client:
        for question in questions(n, tag):
            started = time.perf_counter()
            first = None
            with client.stream("POST", "/v1/chat/completions",
                               json={"messages": [{"role": "user", "content": question}], "max_tokens": 32,
                                     "temperature": 0, "stream": True}) as response:
                for line in response.iter_lines():
                    if first is None and line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            first = (time.perf_counter() - started) * 1000
                            assert chunk.get("route") == "teacher", chunk
            assert first is not None
            out.append(first)
    return out


def escalating_router(folder: Path) -> Path:
    """Keeps every whole answer, keeps no first tokens: every question escalates after the hold."""
    names = tuple(Signals.names())
    zeros, ones = tuple(0.0 for _ in names), tuple(1.0 for _ in names)
    path = folder / "router.json"
    LogisticRouter(names, zeros, ones, zeros, 10.0, 0.5, 1.0).save(path)
    LogisticRouter(names, zeros, ones, zeros, -10.0, 0.5, 1.0).save(early_path(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "teacher_ttft.json")
    args = ap.parse_args()
    rows: dict[str, list[float]] = {}
    with FakeGemini(api_key=KEY, answer=lambda prompt: WORDS) as fake, tempfile.TemporaryDirectory() as tmp:
        rows["teacher alone (the daemon's client, in process)"] = teacher_alone(fake, args.questions + 3)
        for name, extra in (("pre-routed through the daemon (shipped routers)", {"ATHANOR_ROUTING__EXPLORE_SHARE": "0"}),
                            ("escalated after the 8 held tokens", {"ATHANOR_ROUTING__ROUTER": str(escalating_router(Path(tmp)))})):
            env = gemini_env(fake, "ATHANOR_BENCH_GEMINI_KEY", **extra)
            env["ATHANOR_BENCH_GEMINI_KEY"] = KEY
            process, socket = start_daemon(Path(tmp) / name.split()[0], env=env)
            try:
                through_daemon(socket, 3, "warm-" + name.split()[0])  # the first requests start threads
                rows[name] = through_daemon(socket, args.questions, name.split()[0])
            finally:
                stop_daemon(process)
    base = statistics.median(rows["teacher alone (the daemon's client, in process)"])
    report = {}
    print(f"{'':52s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50 over the teacher alone':>28s}")
    for name, values in rows.items():
        p50, p95 = statistics.median(values), statistics.quantiles(values, n=20)[18]
        report[name] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "over_teacher_p50_ms": round(p50 - base, 2),
                        "n": len(values)}
        print(f"{name:52s} {p50:8.1f} {p95:8.1f} {p50 - base:+28.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
