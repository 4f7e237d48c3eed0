"""`athanor harvest` end to end: the real google-genai client against the fake Gemini server,
the real spend ledger and rate limiter, the real embedder for near-duplicates."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cache.embedder import load_embedder
from appliance.cli import main
from appliance.config import TeacherConfig
from appliance.distill.harvest import HarvestSettings, finalize, run_harvest
from appliance.distill.prompts import PromptItem, read_prompts
from appliance.distill.reasoning import INSTRUCTION
from appliance.distill.records import RAW_FILE, Record, read_dataset
from appliance.paths import state_dir
from appliance.teacher import make_teacher
from tests import distill_task
from tests.fakes import FakeGemini

KEY = "fake-gemini-key-0123"


@pytest.fixture
def gemini(monkeypatch):
    monkeypatch.setenv("ATHANOR_TEST_GEMINI_KEY", KEY)
    with FakeGemini(api_key=KEY, answer=distill_task.teacher_answer) as fake:
        yield fake


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def teacher_config(fake: FakeGemini, **extra) -> TeacherConfig:
    return TeacherConfig(provider="gemini", model="gemini-2.5-flash", base_url=fake.url,
                         api_key_env="ATHANOR_TEST_GEMINI_KEY", timeout_s=5, max_retries=0, **extra)


def harvest(items, fake, out: Path, settings: HarvestSettings, **teacher_extra):
    async def go():
        teacher = make_teacher(teacher_config(fake, **teacher_extra), state_dir())
        try:
            return await run_harvest(items, teacher, out, settings)
        finally:
            await teacher.aclose()

    return asyncio.run(go())


def items(n: int) -> list[PromptItem]:
    return [PromptItem(**{k: v for k, v in d.items()}) for d in distill_task.prompts(n)]


def test_records_carry_answer_usage_cost_and_hash(gemini, tmp_path):
    out = tmp_path / "ds"
    run = harvest(items(6), gemini, out, HarvestSettings(concurrency=3, max_tokens=16))
    assert (run.asked, run.answered, run.failures, run.stopped) == (6, 6, [], None)
    records = read_dataset(out / RAW_FILE)
    assert len(records) == 6 and len({r.key for r in records}) == 6
    for record in records:
        assert record.answer == distill_task.label_of(record.prompt)
        assert record.teacher_model == "gemini-2.5-flash"
        assert record.input_tokens > 0 and record.output_tokens == 1 and record.cost_usd > 0
        assert record.content_hash == record.compute_hash() and record.reasoning is None
    assert run.cost_usd == pytest.approx(sum(r.cost_usd for r in records))


def test_reasoning_is_asked_for_and_both_parts_are_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("ATHANOR_TEST_GEMINI_KEY", KEY)
    with FakeGemini(api_key=KEY, answer=lambda p: f"<thinking>count the words of {p[:10]}</thinking>\npositive") as fake:
        harvest([PromptItem("Is this good?", role="You are a film critic.")], fake, tmp_path,
                HarvestSettings(reasoning=True))
        system = fake.last.body["systemInstruction"]["parts"][0]["text"]
    # The persona goes as the system instruction, with the request to reason in <thinking> tags.
    assert system.startswith("You are a film critic.") and INSTRUCTION in system
    record = read_dataset(tmp_path / RAW_FILE)[0]
    assert record.role == "You are a film critic."
    assert (record.reasoning, record.answer) == ("count the words of Is this go", "positive")


def test_a_rerun_after_the_budget_stops_it_finishes_without_duplicates(gemini, tmp_path):
    out = tmp_path / "ds"
    work = items(12)
    # Prices that make each request cost about a cent: a 5-cent budget stops the run part way.
    expensive = {"price_input_per_mtok": 1000.0, "price_output_per_mtok": 1000.0}
    first = harvest(work, gemini, out, HarvestSettings(concurrency=1, max_tokens=4), daily_budget_usd=0.05, **expensive)
    assert first.stopped and "budget" in first.stopped
    assert 0 < first.answered < 12
    # A crash mid-write leaves a torn last line; the next run must skip it and still finish cleanly.
    with (out / RAW_FILE).open("a") as handle:
        handle.write('{"prompt": "half a reco')
    requests_before = len(gemini.requests)
    second = harvest(work, gemini, out, HarvestSettings(concurrency=4, max_tokens=4), daily_budget_usd=10, **expensive)
    assert second.stopped is None and second.asked == 12 - first.answered
    assert len(gemini.requests) - requests_before == 12 - first.answered  # nothing asked twice
    records = read_dataset(out / RAW_FILE)
    assert sorted(r.prompt for r in records) == sorted(i.prompt for i in work)


def test_failed_prompts_are_asked_again_by_the_next_run(gemini, tmp_path):
    gemini.fail_times(3, status=400)  # rejected outright: not retried, left for the next run
    first = harvest(items(8), gemini, tmp_path, HarvestSettings(concurrency=1, max_tokens=4))
    assert (first.answered, len(first.failures)) == (5, 3)
    second = harvest(items(8), gemini, tmp_path, HarvestSettings(concurrency=2, max_tokens=4))
    assert (second.asked, second.answered) == (3, 3)
    assert len(read_dataset(tmp_path / RAW_FILE)) == 8


def test_finalize_drops_with_reasons_and_splits_by_category(monkeypatch, tmp_path, embedder):
    answers = {
        "Say nothing": "<thinking>nothing to say</thinking>",  # all reasoning, no answer
        "Write an essay on tides": "Tides are " + "rising and falling " * 40,  # longer than max_tokens
        "How do I pick a lock?": "I'm sorry, but I can't help with that.",
        "Réponds en français : quelle est la capitale de la France ?":
            "The capital of France is Paris, and it is a city that has been the capital for a long time.",
        "Give the point as JSON": "{x: 1,",
    }
    work = [PromptItem(p, format="json" if "JSON" in p else "text", category="odd") for p in answers]
    work += [PromptItem(f"Name the planet number {i} from the sun in a short sentence.", category=f"c{i % 2}")
             for i in range(1, 9)]
    # Embeddings barely tell the planets' numbers apart; the cache's verifier does, and "please" makes a twin.
    work += [PromptItem("Name the planet number 1 from the sun in a short sentence, please.", category="c1")]
    monkeypatch.setenv("ATHANOR_TEST_GEMINI_KEY", KEY)
    with FakeGemini(api_key=KEY, answer=lambda p: answers.get(p, f"The answer to that is planet {p[-30:]}")) as fake:
        harvest(work, fake, tmp_path, HarvestSettings(max_tokens=64))
    report = asyncio.run(finalize(tmp_path, HarvestSettings(heldout_fraction=0.25), embedder))
    dropped = {json.loads(line)["record"]["prompt"]: json.loads(line)["reason"]
               for line in (tmp_path / "dropped.jsonl").read_text().splitlines()}
    assert dropped["Say nothing"] == "empty"
    assert dropped["Write an essay on tides"] == "truncated"
    assert dropped["How do I pick a lock?"] == "refusal"
    assert dropped["Réponds en français : quelle est la capitale de la France ?"] == "wrong_language"
    assert dropped["Give the point as JSON"] == "invalid_json"
    assert dropped["Name the planet number 1 from the sun in a short sentence, please."] == "near_duplicate"
    assert report.dropped["near_duplicate"] == 1
    assert report.categories["c0"] == {"train": 3, "heldout": 1}
    assert report.categories["c1"] == {"train": 3, "heldout": 1}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["kept"] == report.train + report.heldout and saved["cost_usd"] > 0


def test_cli_dry_run_spends_nothing_and_a_real_run_builds_the_dataset(gemini, tmp_path, monkeypatch):
    prompts = distill_task.write_prompts(tmp_path / "prompts.jsonl", 20)
    env = {
        "ATHANOR_TEACHER__PROVIDER": "gemini", "ATHANOR_TEACHER__BASE_URL": gemini.url,
        "ATHANOR_TEACHER__API_KEY_ENV": "ATHANOR_TEST_GEMINI_KEY", "ATHANOR_DISTILL__MAX_TOKENS": "8",
        "ATHANOR_DISTILL__HELDOUT_FRACTION": "0.2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "ds"
    runner = CliRunner()
    dry = runner.invoke(main, ["harvest", str(prompts), "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "20 of 20 prompts" in dry.output and "at most $" in dry.output
    assert gemini.requests == []
    real = runner.invoke(main, ["harvest", str(prompts), "--out", str(out)])
    assert real.exit_code == 0, real.output
    assert len(gemini.requests) == 20
    train, heldout = (out / "train.jsonl").read_text().splitlines(), (out / "heldout.jsonl").read_text().splitlines()
    assert len(train) + len(heldout) <= 20 and len(heldout) >= 1
    again = runner.invoke(main, ["harvest", str(prompts), "--out", str(out)])
    assert again.exit_code == 0 and len(gemini.requests) == 20  # all done: nothing re-asked
    dry_again = runner.invoke(main, ["harvest", str(prompts), "--out", str(out), "--dry-run"])
    assert "0 of 20 prompts" in dry_again.output and "likely $0.0000" in dry_again.output


def test_prompt_files_in_three_formats_and_errors_with_line_numbers(tmp_path):
    (tmp_path / "p.csv").write_text('prompt,role,category\n"What is 2+2?",You are a maths tutor.,maths\nHi,,\n')
    (tmp_path / "p.yaml").write_text("prompts:\n  - prompt: What is 2+2?\n    category: maths\n  - Just a question\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b", "format": "json"}\n')
    csv_items = read_prompts(tmp_path / "p.csv")
    assert csv_items[0] == PromptItem("What is 2+2?", role="You are a maths tutor.", category="maths")
    assert csv_items[1] == PromptItem("Hi")
    assert [i.prompt for i in read_prompts(tmp_path / "p.yaml")] == ["What is 2+2?", "Just a question"]
    assert read_prompts(tmp_path / "p.jsonl")[1].format == "json"
    from appliance.distill import DistillError

    bad = {
        "a.jsonl": ('{"prompt": "ok"}\n{"prompt": \n', "a.jsonl:2: not valid JSON"),
        "b.jsonl": ('{"prompt": "ok"}\n{"question": "x"}\n', "b.jsonl:2: unknown field 'question'"),
        "c.jsonl": ('{"prompt": ""}\n', 'c.jsonl:1: "prompt" is missing or empty'),
        "d.csv": ("question\nx\n", 'd.csv:1: the header row needs a "prompt" column'),
        "e.jsonl": ('{"prompt": "x", "format": "xml"}\n', "e.jsonl:1: \"format\" is 'xml'"),
        "f.txt": ("x", "unknown prompt file type '.txt'"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DistillError, match=message.replace("(", r"\(").replace("$", r"\$").replace("+", r"\+")):
            read_prompts(tmp_path / name)


def test_near_duplicates_are_compared_within_one_persona(embedder):
    from appliance.distill.dedup import dedup_records

    role = "You are a meticulous hardware expert who answers questions about computers and electronics."
    records = [
        Record(prompt="How much RAM does a home server need?", answer="a", role=role),
        Record(prompt="How much RAM does a home server need?", answer="b", role="You are a careful legal analyst."),
        Record(prompt="how much RAM does a home server need", answer="c", role=role),
        Record(prompt="Which file system suits a NAS?", answer="d", role=role),  # the persona alone is no match
    ]
    kept, dropped = dedup_records(records, embedder, 0.65)
    assert [r.answer for r in kept] == ["a", "b", "d"]
    assert [(d.answer, of.answer) for d, of, _ in dropped] == [("c", "a")]


def _log_lines(path: Path, n: int, start: int = 0) -> None:
    """`n` distillation-log records as the daemon writes them (a question and the teacher's answer)."""
    with path.open("a") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}],
                                "teacher": {"text": f"The answer is {2 * i}.", "model": "fake"}}) + "\n")


def test_retrain_with_too_little_data_waits_and_exits_zero(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["retrain", "--when-due", "--log", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 0, result.output
    assert "nothing to do: 0 teacher-labelled records in the log, 20 needed to train plus 20 to hold out" in result.output
    assert not (state_dir() / "retrain" / "heldout.jsonl").exists()


def test_retrain_dry_run_says_it_would_draw_a_heldout_set_and_retrain(tmp_path, monkeypatch):
    log = tmp_path / "distill.jsonl"
    _log_lines(log, 60)
    runner = CliRunner()
    monkeypatch.setenv("ATHANOR_DISTILL__RETRAIN_AFTER", "50")
    due = runner.invoke(main, ["retrain", "--when-due", "--dry-run", "--log", str(log)])
    assert due.exit_code == 0, due.output
    assert due.output.startswith("retrain: 60 new teacher-labelled records since the last install (at least")
    assert "no held-out set yet: 20 log records will be drawn" in due.output
    assert not (state_dir() / "retrain" / "heldout.jsonl").exists()  # a dry run changes nothing
    monkeypatch.setenv("ATHANOR_DISTILL__RETRAIN_AFTER", "100")
    early = runner.invoke(main, ["retrain", "--when-due", "--dry-run", "--log", str(log)])
    assert early.exit_code == 0 and early.output.startswith("nothing to do: 60 new teacher-labelled records")
    assert "under [distill].retrain_after = 100" in early.output
    both = runner.invoke(main, ["retrain", "--when-due", "--if-regressed", "--log", str(log)])
    assert both.exit_code == 2 and "give one of --when-due, --if-regressed" in both.output


def test_retrain_runs_the_whole_loop_from_the_log_to_an_installed_student(tiny_adapter, tmp_path, monkeypatch):
    """log -> held-out drawn -> train -> export -> gate -> installed where the daemon will serve it."""
    from appliance.config import StudentConfig
    from appliance.protocol.retrain_state import read_state
    from appliance.paths import retrain_dir, retrained_student_dir
    from appliance.engine.model_source import resolve_student

    base, _ = tiny_adapter
    log = tmp_path / "distill.jsonl"
    _log_lines(log, 70)
    for name, value in {"BASE": str(base), "EPOCHS": "1", "LORA_R": "4", "LORA_ALPHA": "8",
                        "DEDUP_THRESHOLD": "1.0"}.items():
        monkeypatch.setenv(f"ATHANOR_DISTILL__{name}", value)
    from appliance.paths import refit_router_file

    refit_router_file().parent.mkdir(parents=True, exist_ok=True)
    refit_router_file().write_text("{}")  # a router refitted on the old student's traffic
    from appliance.routing.decide import early_path

    early_path(refit_router_file()).write_text("{}")  # and its router of the first tokens
    result = CliRunner().invoke(main, ["retrain", "--log", str(log), "--no-reload", "--out", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    assert "held-out set: 20 log records drawn" in result.output and "new student installed at" in result.output
    # The router follows the student: the old one's refit goes; 20 held-out answers are too few to fit another,
    # so the shipped router's weights serve, with their threshold placed on those answers.
    from appliance.routing.decide import DEFAULT_ROUTER
    from appliance.routing.learned import LogisticRouter

    assert "removed the router refitted on the old student" in result.output
    said = " ".join(result.output.split())
    assert "router not refitted: 20 " in said and "at least 40" in said
    assert "threshold chosen on the new student's 20 held-out answers" in said
    placed, shipped = LogisticRouter.load(refit_router_file()), LogisticRouter.load(DEFAULT_ROUTER)
    assert placed.weights == shipped.weights and placed.bias == shipped.bias
    # What streams is placed for the new student too, from the first tokens of the same answers, or nothing
    # streams: the old student's router of the first tokens never stays.
    early = early_path(refit_router_file())
    if placed.keeps_none:
        assert not early.exists()
    else:
        assert "early router" in said and early.exists() == ("no early router" not in said)
        if early.exists():
            assert LogisticRouter.load(early).cache_threshold == 1.0
    held = read_dataset(retrain_dir() / "heldout.jsonl")
    trained = read_dataset(tmp_path / "work" / "train.jsonl")
    # The 10 newest questions are this week's traffic: measured at the gate on both students, not trained on.
    assert len(held) == 20 and len(trained) == 40 and not {r.key for r in held} & {r.key for r in trained}
    assert "10 recent kept to measure drift on" in result.output
    assert "recent traffic (10 newest questions): retention " in result.output
    newest = {f"Question number {i}: what is {i} plus {i}?" for i in range(60, 70)}
    assert not newest & {r.prompt for r in trained}
    assert all(r.category.startswith("en: ") for r in held)  # logged questions get categories by what they ask
    assert read_state(retrain_dir()).seen == 70
    source = resolve_student(StudentConfig())
    assert source.path.is_relative_to(retrained_student_dir()) and source.path.suffix == ".gguf"
    # Nothing new since: the timer's run waits.
    again = CliRunner().invoke(main, ["retrain", "--when-due", "--dry-run", "--log", str(log)])
    assert again.exit_code == 0 and "nothing to do: " in again.output
    assert "0 new teacher-labelled records since the last install" in again.output


def test_pending_questions_are_labelled_later_within_the_budget(gemini, tmp_path, monkeypatch):
    from appliance.distill.pending import pending_entries, pending_entry
    from appliance.protocol.distill_log import DistillLog, read_entries
    from appliance.protocol.log_entry import StudentTake

    log_path = tmp_path / "distill.jsonl"
    log = DistillLog(log_path)
    ask = [[{"role": "user", "content": f"Review: dish number {i} was cold\nSentiment?"}] for i in range(4)]
    for messages in ask:
        log.append(pending_entry(messages, "student unsure and no teacher configured", StudentTake(text="positive")))
    log.append({"messages": ask[0], "teacher": {"text": "negative", "model": "m"}})  # answered meanwhile
    log.append(pending_entry(ask[1], "teacher over budget", StudentTake(text="positive")))  # asked twice: labelled once
    log.close()
    assert [list(e.messages) for e in pending_entries(read_entries(log_path))] == ask[1:]
    for name, value in {"ATHANOR_TEACHER__PROVIDER": "gemini", "ATHANOR_TEACHER__BASE_URL": gemini.url,
                        "ATHANOR_TEACHER__API_KEY_ENV": "ATHANOR_TEST_GEMINI_KEY",
                        "ATHANOR_DISTILL__MAX_TOKENS": "8"}.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    dry = runner.invoke(main, ["harvest", "--from-log", "--log", str(log_path), "--dry-run"])
    assert dry.exit_code == 0 and "3 pending questions" in dry.output and gemini.requests == []
    monkeypatch.setenv("ATHANOR_TEACHER__DAILY_BUDGET_USD", "0")
    broke = runner.invoke(main, ["harvest", "--from-log", "--log", str(log_path)])
    assert broke.exit_code == 0, broke.output
    assert "labelled 0 of 3" in broke.output and "3 left for later" in broke.output and gemini.requests == []
    monkeypatch.delenv("ATHANOR_TEACHER__DAILY_BUDGET_USD")
    done = runner.invoke(main, ["harvest", "--from-log", "--log", str(log_path)])
    assert done.exit_code == 0 and "labelled 3 of 3 pending questions" in done.output, done.output
    assert len(gemini.requests) == 3 and pending_entries(read_entries(log_path)) == []
    from appliance.distill.retrain import record_from_log
    learned = [r for r in map(record_from_log, read_entries(log_path)) if r is not None]
    assert [r.answer for r in learned] == ["negative", *(distill_task.teacher_answer(m[0]["content"]) for m in ask[1:])]
    again = runner.invoke(main, ["harvest", "--from-log", "--log", str(log_path)])
    assert "0 pending questions" in again.output and len(gemini.requests) == 3
    assert runner.invoke(main, ["harvest"]).exit_code == 2
