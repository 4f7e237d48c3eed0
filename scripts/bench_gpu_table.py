#!/usr/bin/env python3
"""The one table `scripts/bench_gpu.sh` prints: every figure its steps wrote into OUT, named after the device,
with the issue's targets beside those that have one. A step that wrote nothing shows as "not measured".

    python scripts/bench_gpu_table.py OUT     # also writes OUT/summary.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NOT_MEASURED = "not measured"


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def rows(out: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """(device name, [(measure, value, target)]) from the files the benchmark steps wrote (pure but for reading)."""
    table: list[tuple[str, str, str]] = []
    serve = _load(out / "serve.json")
    device = serve.get("device", "unknown device") if isinstance(serve, dict) else "unknown device"
    doctor = _load(out / "doctor.json")
    checks = {c.get("name"): c for c in doctor} if isinstance(doctor, list) else {}
    table.append(("llama.cpp build", checks.get("llama.cpp", {}).get("message", NOT_MEASURED), "a GPU build, every layer offloaded"))
    table.append(("onnxruntime", checks.get("onnxruntime", {}).get("message", NOT_MEASURED), "CUDAExecutionProvider listed"))
    by_clients = {r["clients"]: r for r in serve.get("daemon", [])} if isinstance(serve, dict) else {}
    for clients, r in sorted(by_clients.items()):
        table.append((f"serve, {clients} client(s): tokens/s, ttft p95", f"{r['aggregate_tokens_per_s']:.1f}, "
                      f"{r['ttft_ms_p95']:.0f} ms", ""))
    one, eight = by_clients.get(1), by_clients.get(8)
    if one and eight:
        table.append(("8 clients / 1: tokens/s", f"{eight['aggregate_tokens_per_s'] / one['aggregate_tokens_per_s']:.2f}x",
                      ">= 5x"))
        table.append(("8 clients / 1: ttft p95", f"{eight['ttft_ms_p95'] / one['ttft_ms_p95']:.2f}x", "< 2x"))
    else:
        table.append(("8 clients against 1", NOT_MEASURED, ">= 5x tokens/s, ttft p95 < 2x"))
    daemon = _load(out / "daemon.json")
    if isinstance(daemon, dict):
        table.append(("daemon / raw llama.cpp tokens/s", f"{daemon['ratio_daemon_vs_raw']:.3f}", ""))
        table.append(("daemon's added latency per request", f"{daemon['added_latency_1tok_ms']:.1f} ms", ""))
    else:
        table.append(("daemon against raw llama.cpp", NOT_MEASURED, ""))
    export = _load(out / "export.json")
    if isinstance(export, dict):
        for artifact in export.get("artifacts", []):
            table.append((f"export {artifact['artifact']}: agreement, tokens/s",
                          f"{artifact.get('agreement', float('nan')):.3f}, {artifact.get('tokens_per_s', 0):.0f}", ""))
    else:
        table.append(("export with verification", NOT_MEASURED, ""))
    training = _load(out / "adapter" / "training.json")
    seconds = (out / "train_seconds").read_text().strip() if (out / "train_seconds").is_file() else "?"
    if isinstance(training, dict):
        table.append(("LoRA training", f"{training.get('precision')} on {training.get('device') or '?'}, "
                      f"{training.get('steps')} steps in {seconds} s, final loss {training.get('final_loss')}",
                      "bf16 on the GPU"))
    else:
        table.append(("LoRA training", NOT_MEASURED, "bf16 on the GPU"))
    return device, table


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: bench_gpu_table.py OUT (the folder bench_gpu.sh wrote)")
    out = Path(sys.argv[1])
    device, table = rows(out)
    width = max(len(m) for m, _, _ in table)
    print(f"\nAthanor on {device}")
    for measure, value, target in table:
        print(f"  {measure:<{width}}  {value}" + (f"   (target: {target})" if target else ""))
    (out / "summary.json").write_text(json.dumps({"device": device, "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
