import json
import os
import signal
import subprocess
import sys

import pytest

from appliance.protocol.distill_log import DistillLog, read_records

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
         "import sys; from pathlib import Path; from appliance.protocol.distill_log import DistillLog\n"
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


def test_log_entries_read_back_as_written_and_malformed_lines_are_skipped(tmp_path):
    from appliance.protocol.distill_log import read_entries
    from appliance.protocol.log_entry import LogEntry, StudentTake, TeacherTake

    written = LogEntry(messages=({"role": "system", "content": "简短回答。"}, {"role": "user", "content": "水的沸点是多少度？"}),
                       teacher=TeacherTake(text="100°C", model="gemini", input_tokens=9, output_tokens=3, cost_usd=1e-5),
                       student=StudentTake(text="90°C", model="s", version="v2", confidence={"score": 0.4, "method": "q10"},
                                           signals={"best_mean": 0.7}, early_signals={"best_mean": 0.5},
                                           partial=False))
    log = DistillLog(tmp_path / "d.jsonl")
    log.append(written)
    # A line in the shape the daemon wrote before the types existed, and lines that hold no conversation.
    log.append({"messages": [{"role": "user", "content": "Is 7 prime?"}], "pending": {"reason": "teacher over budget"},
                "student": {"text": "yes", "signals": {"best_mean": "high"}}})
    log.append({"messages": "not a list"})
    log.append({"prompt": "a harvest record, not a log entry"})
    log.close()
    first, second = read_entries(tmp_path / "d.jsonl")
    assert first.messages == written.messages and first.teacher == written.teacher and first.student == written.student
    assert first.answered and first.question == "水的沸点是多少度？" and first.ts is not None
    assert not second.answered and second.pending == "teacher over budget" and second.question == "Is 7 prime?"
    assert second.student is not None and second.student.signals == {}  # a non-number signal is dropped, not guessed


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_the_log_reads_backwards_as_it_reads_forwards_whatever_the_block(tmp_path, block):
    from appliance.protocol.distill_log import read_records_newest_first

    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"i": i, "text": "水" * (i % 13)}, ensure_ascii=False) for i in range(40)]
    # A corrupt line, a blank one and a last line torn by a crash mid-write are all skipped.
    path.write_bytes(("\n".join(lines[:20] + ["{not json", ""] + lines[20:]) + "\n" + '{"i": 99, "te').encode())
    backwards = list(read_records_newest_first(path, block=block))
    assert backwards == list(reversed(list(read_records(path))))
    assert [r["i"] for r in backwards] == list(range(39, -1, -1))
    assert list(read_records_newest_first(tmp_path / "missing.jsonl")) == []
    path.write_bytes(b"")
    assert list(read_records_newest_first(path, block=block)) == []
