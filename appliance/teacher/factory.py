"""Builds the configured teacher (or none) with its key, price table, spend ledger and rate limiter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import TeacherConfig
from ..storage.health import StorageHealth
from .base import Teacher
from .keys import read_api_key
from .limits import RateLimiter, SpendLedger
from .pricing import price_for

LEDGER_FILE = "teacher-spend.sqlite3"


def make_teacher(cfg: TeacherConfig, state_dir: Path, health: StorageHealth | None = None) -> Teacher | None:
    """The teacher `[teacher]` describes, or None for provider "none"; raises `ConfigError` for a missing key or price."""
    if cfg.provider == "none":
        return None
    price = price_for(cfg)
    key = read_api_key(cfg)
    ledger = SpendLedger(Path(state_dir) / LEDGER_FILE, cfg.daily_budget_usd, health=health)
    limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)
    # Imported here: google.genai takes about a second to import, and most commands never need it.
    if cfg.provider == "gemini":
        from .gemini import GeminiTeacher

        return GeminiTeacher(cfg, key, ledger, limiter, price)
    from .openai_compat import OpenAICompatTeacher

    return OpenAICompatTeacher(cfg, key, ledger, limiter, price)


def teacher_status(teacher: Teacher | None) -> dict[str, Any]:
    """Spend and identity of the teacher for a stats endpoint (never the key)."""
    if teacher is None:
        return {"provider": "none", "model": None, "spent_today": 0.0, "budget": 0.0}
    guard = getattr(teacher, "guard", None)
    return {
        "provider": getattr(teacher, "provider", teacher.name),
        "model": getattr(teacher, "model", None),
        "spent_today": guard.ledger.spent_today() if guard else None,
        "budget": guard.ledger.daily_budget_usd if guard else None,
    }
