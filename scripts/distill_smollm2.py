#!/usr/bin/env python3
"""The distillation loop on the embedded SmolLM2-135M-Instruct (dequantized from its GGUF), on CPU.

A fake Gemini server (tests/fakes, spoken to by the real google-genai client) labels review
sentiment; the script harvests N prompts, measures the base student's agreement with the teacher
on the held-out prompts, LoRA-trains it, and measures again.

    nice -n 10 .venv/bin/python scripts/distill_smollm2.py --prompts 300 --out /tmp/smollm2-distill
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.cache.embedder import load_embedder  # noqa: E402
from appliance.config import TeacherConfig  # noqa: E402
from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.distill.evaluate import EvalSettings, evaluate, write_outputs  # noqa: E402
from appliance.distill.harvest import HarvestSettings, finalize, run_harvest  # noqa: E402
from appliance.distill.progress import bar  # noqa: E402
from appliance.distill.prompts import PromptItem  # noqa: E402
from appliance.distill.records import HELDOUT_FILE, TRAIN_FILE, file_sha256, read_dataset  # noqa: E402
from appliance.distill.students import HFRunner  # noqa: E402
from appliance.distill.train import TrainSettings, train  # noqa: E402
from appliance.teacher import make_teacher  # noqa: E402
from tests import distill_task  # noqa: E402
from tests.fakes import FakeGemini  # noqa: E402

ROLE = "You label the sentiment of reviews. Answer with one word: positive or negative."
KEY = "fake-key"


async def harvest(items: list[PromptItem], out: Path) -> None:
    os.environ["DISTILL_FAKE_KEY"] = KEY
    with FakeGemini(api_key=KEY, answer=distill_task.teacher_answer) as fake:
        cfg = TeacherConfig(provider="gemini", base_url=fake.url, api_key_env="DISTILL_FAKE_KEY",
                            requests_per_minute=100_000)
        teacher = make_teacher(cfg, out / "state")
        with bar("harvest", len(items), "") as (progress, task):
            await run_harvest(items, teacher, out, HarvestSettings(concurrency=8, max_tokens=8),
                              lambda r, cost: progress.update(task, advance=1, extra=f"${cost:.5f}"))
        await teacher.aclose()
    report = await finalize(out, HarvestSettings(heldout_fraction=0.2), load_embedder())
    print(f"dataset: {report.train} train, {report.heldout} held out, dropped {report.dropped}")


def agreement(student: Path, heldout, out: Path, label: str) -> float:
    runner = HFRunner(student)
    with bar(f"evaluate {label}", len(heldout), "") as (progress, task):
        result = asyncio.run(evaluate(heldout, runner, EvalSettings(max_tokens=6),
                                      on_item=lambda item: progress.update(task, advance=1)))
    write_outputs(result, out / f"eval-{label}")
    examples = [a["student"] for a in result.answers[:4]]
    print(f"{label}: agreement {result.agreement:.1%} on {len(heldout)} held-out prompts; e.g. {examples}")
    return result.agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/smollm2-distill"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    started = time.monotonic()
    items = [PromptItem(prompt=p["prompt"], role=ROLE, category=p["category"], expected=p["expected"])
             for p in distill_task.prompts(args.prompts)]
    asyncio.run(harvest(items, args.out))
    heldout, records = read_dataset(args.out / HELDOUT_FILE), read_dataset(args.out / TRAIN_FILE)
    base = embedded_student_path()
    before = agreement(base, heldout, args.out, "before")
    settings = TrainSettings(learning_rate=args.lr, epochs=args.epochs, batch_size=8, max_seq_len=256)
    adapter = args.out / "adapter"
    with bar("train", None, "") as (progress, task):
        result = train(records, base, adapter, settings, dataset_sha256=file_sha256(args.out / TRAIN_FILE),
                       on_step=lambda s, n, loss: progress.update(task, completed=s, total=n, extra=f"loss {loss:.4f}"))
    print(f"trained {result.steps} steps, loss {result.losses[0][1]:.3f} -> {result.final_loss:.3f}")
    after = agreement(adapter, heldout, args.out, "after")
    summary = {"prompts": args.prompts, "train": len(records), "heldout": len(heldout), "before": before,
               "after": after, "steps": result.steps, "final_loss": result.final_loss,
               "minutes": round((time.monotonic() - started) / 60, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
