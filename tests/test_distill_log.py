import os
import signal
import subprocess
import sys

from appliance.distill_log import DistillLog, read_records

from .conftest import ROOT


def test_records_round_trip(tmp_path):
    log = DistillLog(tmp_path / "d.jsonl")
    log.append({"prompt": "a", "answer": "ü"})
    log.append({"prompt": "b", "answer": "c"})
    log.close()
    assert [r["prompt"] for r in read_records(tmp_path / "d.jsonl")] == ["a", "b"]


def test_a_torn_last_line_is_skipped_and_repaired(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt":"ok"}\n{"prompt":"tor')
    log = DistillLog(path)
    log.append({"prompt": "after"})
    log.close()
    assert [r["prompt"] for r in read_records(path)] == ["ok", "after"]


def test_acknowledged_records_survive_kill_9(tmp_path):
    path = tmp_path / "d.jsonl"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from appliance.distill_log import DistillLog\n"
         f"log = DistillLog(Path({str(path)!r}))\n"
         "i = 0\n"
         "while True:\n"
         "    log.append({'i': i, 'pad': 'x' * 500}); print(i, flush=True); i += 1\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    acknowledged = []
    for line in writer.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) == 200:
            os.kill(writer.pid, signal.SIGKILL)
            break
    writer.wait()
    stored = [r["i"] for r in read_records(path)]
    assert set(acknowledged) <= set(stored)
    assert stored == list(range(len(stored)))  # nothing half-written in the middle
