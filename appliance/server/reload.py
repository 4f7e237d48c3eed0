"""Hot reload: re-read the config, load the new students beside the old ones, swap, retire the old.

SIGHUP (systemd's `ExecReload=`) and `POST /v1/admin/reload` (`athanor reload`) both end here.
New requests go to the new students the moment they are swapped in; answers already in flight
finish on the old ones, which are closed afterwards. A config that does not validate, or a model
that does not load, changes nothing: the old students keep serving and the outcome says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from ..config import AthanorConfig
from ..errors import AthanorError
from ..routing.router import Router, Student
from ..routing.decide import load_policy, serving_past_outcomes
from .sd_notify import notify as sd_notify

log = logging.getLogger(__name__)

# Sections a reload cannot apply: the socket is bound, the cache and the teacher are open.
RESTART_ONLY = ("server", "cache", "teacher")


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: `ok` with the students now serving, or the reason nothing changed."""

    ok: bool
    message: str
    students: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"ok": self.ok, "message": self.message, "students": list(self.students)}


class Reloader:
    """Swaps freshly loaded students into `router`; one reload at a time."""

    def __init__(
        self,
        router: Router,
        config: AthanorConfig,
        read_config: Callable[[], AthanorConfig],
        load_students: Callable[[AthanorConfig], dict[str, Student]],
        retire_timeout_s: float = 30.0,
        on_config: Callable[[AthanorConfig], None] | None = None,
        notify: Callable[..., bool] = sd_notify,
    ) -> None:
        self.router = router
        self.config = config
        self.read_config = read_config
        self.load_students = load_students
        self.retire_timeout_s = retire_timeout_s
        self.on_config = on_config
        self.notify = notify
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadOutcome:
        """Re-read the config and swap in new students; never raises for a bad config or model."""
        async with self._lock:
            # MONOTONIC_USEC lets systemd tell this reload from an earlier one (sd_notify(3)).
            self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")
            try:
                config = await asyncio.to_thread(self.read_config)
                # Loading takes seconds: in a thread, so the old students keep answering meanwhile.
                students = await asyncio.to_thread(self.load_students, config)
                # A router refitted by `athanor evaluate` or `retrain` is picked up here.
                policy = await asyncio.to_thread(load_policy, config.routing.router)
                early_policy = await asyncio.to_thread(load_policy, config.routing.router, True)
                pre_policy = await asyncio.to_thread(load_policy, config.routing.router, False, True)
                ensemble_policy = await asyncio.to_thread(load_policy, config.routing.router, False, False, True)
                cache = self.router.routing.cache
                past_outcomes = await asyncio.to_thread(
                    serving_past_outcomes, config, cache.embed_texts if cache is not None else None, students)
            except Exception as exc:  # whatever went wrong, the daemon must go on serving
                return self._failed(exc)
            old = self.router.replace_students(students, config.student.name)
            self.router.routing.confidence_threshold = config.routing.confidence_threshold
            self.router.routing.confidence_quantile = config.routing.confidence_quantile
            self.router.routing.policy = policy
            self.router.routing.early_policy = early_policy
            self.router.routing.pre_policy = pre_policy
            self.router.routing.past_outcomes = past_outcomes
            self.router.routing.hold_tokens = config.routing.hold_tokens
            self.router.routing.explore_share = config.routing.explore_share
            self.router.routing.ensemble_policy = ensemble_policy
            self.router.routing.mode = config.routing.mode
            self._warn_restart_only(config)
            self.config = config
            if self.on_config is not None:
                self.on_config(config)
            names = tuple(students)
            log.info("reload: now serving %s; retiring the old students once their answers finish", ", ".join(names))
            await self._retire(old)
            message = f"serving {', '.join(names)} (reloaded)"
            self.notify("READY=1", f"STATUS={message}")
            return ReloadOutcome(True, message, names)

    def _failed(self, exc: Exception) -> ReloadOutcome:
        if isinstance(exc, AthanorError):
            reason = str(exc)
            log.error("reload failed: %s", reason)
        else:
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("reload failed")
        serving = tuple(self.router.students)
        message = f"reload failed, still serving {', '.join(serving)}: {reason}"
        self.notify("READY=1", f"STATUS={message}")
        return ReloadOutcome(False, message, serving)

    def _warn_restart_only(self, config: AthanorConfig) -> None:
        before, after = self.config.model_dump(mode="json"), config.model_dump(mode="json")
        changed = [f"[{section}]" for section in RESTART_ONLY if before.get(section) != after.get(section)]
        if changed:
            log.warning("reload: changes to %s take effect only after a restart (systemctl restart athanor)",
                        ", ".join(changed))

    async def _retire(self, old: dict[str, Student]) -> None:
        """Let each old student's submitted answers finish (up to the timeout), then free its model."""
        for student in old.values():
            try:
                await asyncio.to_thread(student.scheduler.close, self.retire_timeout_s)
                await asyncio.to_thread(student.engine.close)
            except Exception:  # the new students serve already; a failed cleanup only costs memory
                log.exception("reload: could not close the old student %s", student.name)
