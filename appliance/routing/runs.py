"""One admitted request each: served from the cache, the student (held, streamed or escalated to the teacher),
the role ensemble, or the teacher before any decode."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator

from ..cache import CacheHit, CacheKey
from ..cache.store import TEACHER_VERSION
from ..engine.scheduler import Job
from ..engine.text import TextAssembler
from ..engine.types import Completion, FinishReason, SamplingParams, TokenEvent
from ..protocol.log_entry import LogEntry, StudentTake, pending_entry, teacher_entry
from ..teacher.base import TeacherError, TeacherParams
from ..teacher.limits import SpendLedger
from .confidence import Confidence, confidence
from .decide import Decision, decide
from .ensemble import DEFAULT_ROLES, VOTE_SHARE, integration_messages, majority
from .records import Answer, ChatRequest, Delta, EnsembleVote, Student, last_user_text
from .signals import signals

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger(__name__)


class Run:
    """One admitted request: iterate `events()` for text deltas, then one `Answer`."""

    student: Student
    prompt: list[int]

    def events(self) -> AsyncIterator[Delta | Answer]:
        raise NotImplementedError


class CachedRun(Run):
    def __init__(self, router: Router, student: Student, prompt: list[int], hit: CacheHit) -> None:
        self.router = router
        self.student = student
        self.prompt = prompt
        self.hit = hit

    async def events(self) -> AsyncIterator[Delta | Answer]:
        completion_tokens = int(self.hit.meta.get("completion_tokens", 0))
        yield Delta(self.hit.answer, [], "cache")
        yield Answer(
            model=self.student.name,
            route="cache",
            completion=Completion(self.hit.answer, "stop", len(self.prompt), [], completion_tokens),
            queued_s=0.0,
            elapsed_s=0.0,
            cache_similarity=self.hit.similarity,
            saved_usd=self.router.saved(len(self.prompt), completion_tokens),
        )


class StudentRun(Run):
    teacher_failed: str | None = None
    """Why the teacher, asked before the student, could not answer; it is not asked again."""
    teacher_messages: list[dict[str, Any]] | None = None
    """What the teacher is asked, when not the request's own messages (an ensemble's drafts added)."""

    def __init__(self, router: Router, student: Student, prompt: list[int], params: SamplingParams, job: Job | None,
                 request: ChatRequest, key: CacheKey | None, prompt_text: str, hold: bool) -> None:
        self.router = router
        self.student = student
        self.prompt = prompt
        self.params = params
        self.job = job
        self.request = request
        self.key = key
        self.prompt_text = prompt_text
        self.hold = hold
        self.started = time.monotonic()

    @property
    def queued_s(self) -> float:
        """Time spent waiting for the student before decoding began."""
        if self.job is None:
            return 0.0
        return (self.job.started_at or self.started) - self.job.enqueued_at

    async def _student_deltas(self, assembler: TextAssembler, tokens: list[TokenEvent]) -> AsyncGenerator[Delta, None]:
        assert self.job is not None
        pending: list[TokenEvent] = []
        try:
            async for token in self.job.tokens():
                delta = assembler.feed(token)
                tokens.append(token)
                pending.append(token)
                if delta.text:
                    yield Delta(delta.text, pending)
                    pending = []
                if assembler.stopped:
                    break
            tail = assembler.finish()
            if tail.text or pending:
                yield Delta(tail.text, pending)
        finally:
            # Whether we stopped early, failed or the client left: the slot is freed now.
            self.job.cancel()

    async def events(self) -> AsyncIterator[Delta | Answer]:
        routing = self.router.routing
        assembler = TextAssembler(self.params.stop)
        tokens: list[TokenEvent] = []
        held: list[Delta] = []
        question = last_user_text(self.request.messages)
        early = routing.early_policy if self.hold else None
        live = not self.hold  # deltas go out as they come
        escalated = False
        deltas = self._student_deltas(assembler, tokens)
        try:
            async for delta in deltas:
                if live:
                    yield delta
                    continue
                held.append(delta)
                if early is not None and len(tokens) >= routing.hold_tokens:
                    if not decide(question, tokens, early, 0.0, routing.confidence_quantile).keep:
                        escalated = True  # the first tokens already say unsure: the teacher, now
                        break
                    live = True
                    for waiting in held:
                        yield waiting
                    held = []
            reason = None
            if escalated:
                # The student goes on meanwhile: if the teacher fails, its whole answer is still served.
                sure = decide(question, tokens, routing.policy, routing.confidence_threshold,
                              routing.confidence_quantile).confidence
                try:
                    async for event in self._ask_teacher(Completion(assembler.text, "stop", len(self.prompt),
                                                                    list(tokens)), sure, partial=True):
                        yield event
                    return
                except TeacherError as exc:
                    reason = str(exc)
                    log.warning("teacher failed, serving the student's answer: %s", reason)
                async for delta in deltas:
                    held.append(delta)
        finally:
            await deltas.aclose()  # frees the student's slot whatever happened
        assert self.job is not None, "the student's tokens came from a job: _student_deltas needs one"
        finish: FinishReason = "stop" if assembler.stopped else (self.job.finish_reason or "stop")
        completion = Completion(assembler.text, finish, len(self.prompt), tokens)
        decision = decide(question, tokens, routing.policy, routing.confidence_threshold, routing.confidence_quantile)
        sure = decision.confidence
        unsure = escalated or not decision.keep
        if escalated:
            pass  # the teacher failed: `reason` says so
        elif live and self.hold and unsure:
            # The first tokens were trusted and the answer has gone out; as a whole it does not convince
            # the router: it is served as it is, flagged, and not cached.
            reason = "the student's answer streamed once its first tokens looked sure; as a whole it is unsure"
        elif unsure and self.request.raw_prompt is not None:
            reason = "student unsure; text completions are the student's alone, so the teacher was not asked"
        elif unsure and self.teacher_failed:
            reason = self.teacher_failed
        elif unsure and routing.teacher is not None and self.params.logit_bias:
            reason = "student unsure; logit_bias applies to the student's tokens, so the teacher was not asked"
        elif unsure and routing.teacher is not None:
            try:
                async for event in self._ask_teacher(completion, sure):
                    yield event
                return
            except TeacherError as exc:
                reason = str(exc)
                log.warning("teacher failed, serving the student's answer: %s", reason)
        elif unsure:
            reason = "student unsure and no teacher configured"
        if unsure and self.request.raw_prompt is None:
            await self._keep_pending(completion, sure, reason)
        for delta in held:
            yield delta
        if decision.cache and not unsure:
            await self._remember(completion.text, completion.completion_tokens, "student", sure)
        yield Answer(
            model=self.student.name,
            route="student",
            completion=completion,
            queued_s=self.queued_s,
            elapsed_s=time.monotonic() - self.started,
            confidence=sure,
            saved_usd=self.router.saved(completion.prompt_tokens, completion.completion_tokens),
            degraded=unsure,
            degraded_reason=reason,
        )

    async def _ask_teacher(self, student_answer: Completion, sure: Confidence,
                           partial: bool = False) -> AsyncIterator[Delta | Answer]:
        """The teacher's answer, within the asking API key's own daily budget when it has one: over it, the
        key's `BudgetExceeded` (a `TeacherError`, raised before anything is sent) has the student answer."""
        ledger = self._payer_ledger()
        if ledger is None:
            async for event in self._teacher_events(student_answer, sure, partial):
                yield event
            return
        price = self.router.routing.price
        estimate = price(len(self.prompt), self.params.max_tokens) if price is not None else 0.0
        booked = await asyncio.to_thread(ledger.reserve, estimate)
        try:
            async for event in self._teacher_events(student_answer, sure, partial):
                if isinstance(event, Answer):
                    # An answer broken off mid-way brings no usage, yet was billed: charged at the estimate.
                    await asyncio.to_thread(ledger.record, booked if event.degraded else event.cost_usd)
                yield event
        finally:
            ledger.release(booked)

    def _payer_ledger(self) -> SpendLedger | None:
        payers = self.router.routing.payers
        if payers is None or self.request.payer is None or self.request.payer_budget_usd is None:
            return None
        return payers.ledger(self.request.payer, self.request.payer_budget_usd)

    async def _teacher_events(self, student_answer: Completion, sure: Confidence,
                              partial: bool) -> AsyncIterator[Delta | Answer]:
        routing = self.router.routing
        assert routing.teacher is not None
        params = TeacherParams(max_tokens=self.params.max_tokens, temperature=self.params.temperature,
                               top_p=self.params.top_p, stop=self.params.stop, seed=self.params.seed,
                               json_format=self.params.json_format)
        parts: list[str] = []
        answer = None
        # An ensemble whose drafts disagree shows them to the teacher; what is logged is the question alone.
        chunks = routing.teacher.stream(self.teacher_messages or self.request.messages, params)
        try:
            async for chunk in chunks:
                if chunk.answer is not None:
                    answer = chunk.answer
                    break
                if not parts and self.job is not None:
                    self.job.cancel()  # the teacher has begun: an escalated student need not go on
                parts.append(chunk.text)
                yield Delta(chunk.text, [], "teacher")
        except TeacherError as exc:
            if not parts:
                raise  # nothing went out: the caller serves the student's answer instead
            # Part of the teacher's answer is out: it ends here, flagged, and is neither logged nor cached.
            text = "".join(parts)
            yield Answer(model=self.student.name, route="teacher",
                         completion=Completion(text, "length", len(self.prompt), [], max(1, len(text) // 4)),
                         queued_s=self.queued_s, elapsed_s=time.monotonic() - self.started, confidence=sure,
                         degraded=True, degraded_reason=str(exc))
            return
        finally:
            await chunks.aclose()
        if answer is None:
            raise TeacherError("the teacher's stream ended without its final usage; the student's answer stands")
        await self._log(teacher_entry(self.request.messages, answer, self._student_record(student_answer, sure, partial)))
        await self._remember(answer.text, answer.output_tokens, "teacher", sure)
        yield Answer(
            model=self.student.name,
            route="teacher",
            completion=Completion(answer.text, answer.finish_reason, answer.input_tokens, [], answer.output_tokens),
            queued_s=self.queued_s,
            elapsed_s=time.monotonic() - self.started,
            confidence=sure,
            cost_usd=answer.cost_usd,
        )

    async def _keep_pending(self, completion: Completion, sure: Confidence, reason: str | None) -> None:
        """Log an unsure answer served without the teacher's as pending: `harvest --from-log` labels it later."""
        await self._log(pending_entry(self.request.messages, reason, self._student_record(completion, sure)))

    def _student_record(self, completion: Completion, sure: Confidence, partial: bool = False) -> StudentTake:
        # The router's signals go into the log with the answer, so that `athanor router refit` can learn,
        # from the teacher's verdicts on this student, which signal values mean a wrong answer.
        question = last_user_text(self.request.messages)
        found = early = None
        if completion.tokens:
            found = signals(question, completion.tokens).as_dict()
            # And those of its first tokens, from which the early router learns what may stream.
            early = signals(question, completion.tokens[:self.router.routing.hold_tokens]).as_dict()
        return StudentTake(text=completion.text, model=self.student.name, version=self.student.version,
                           confidence=sure.as_dict(), signals=found, early_signals=early, partial=partial)

    async def _log(self, record: LogEntry) -> None:
        """Append to the distillation log, if there is one; a failed write is reported to the storage health."""
        routing = self.router.routing
        if routing.distill_log is None:
            return
        try:
            await asyncio.to_thread(routing.distill_log.append, record)
            routing.storage.wrote("distill_log")
        except OSError as exc:  # disk full: the client still gets its answer
            log.error("could not write the distillation log: %s", exc)
            routing.storage.failed("distill_log", exc)

    async def _remember(self, text: str, completion_tokens: int, source: str, sure: Confidence) -> None:
        cache = self.router.routing.cache
        if cache is None or self.key is None or not self.request.cache_write or not text.strip():
            return
        meta = {"source": source, "completion_tokens": completion_tokens, "confidence": sure.score}
        key = replace(self.key, model_version=TEACHER_VERSION, also_serves=()) if source == "teacher" else self.key
        try:
            await asyncio.to_thread(cache.put, key, self.prompt_text, text, meta)
        except Exception:  # a cache that cannot write must not cost the client its answer
            log.exception("cache write failed")


class EnsembleRun(StudentRun):
    """The plain answer and the role drafts, decoded together; the claim most of them make is served.

    Nothing streams before the vote: the drafts decide whether the student's answer goes out at all.
    """

    def __init__(self, router: Router, student: Student, prompt: list[int], params: SamplingParams, jobs: list[Job],
                 request: ChatRequest, key: CacheKey | None, prompt_text: str) -> None:
        super().__init__(router, student, prompt, params, jobs[0], request, key, prompt_text, hold=True)
        self.jobs = jobs

    async def _whole(self, job: Job, prompt_tokens: int) -> Completion:
        assembler = TextAssembler(self.params.stop)
        tokens: list[TokenEvent] = []
        try:
            async for token in job.tokens():
                assembler.feed(token)
                tokens.append(token)
                if assembler.stopped:
                    break
            assembler.finish()
        finally:
            job.cancel()
        finish: FinishReason = "stop" if assembler.stopped else (job.finish_reason or "stop")
        return Completion(assembler.text, finish, prompt_tokens, tokens)

    def _vote(self, question: str, served: Completion, share: float) -> Decision:
        routing = self.router.routing
        base = confidence([e.logprob for e in served.tokens], routing.confidence_quantile)
        policy = routing.ensemble_policy
        if policy is None:
            # No fitted ensemble router: only a unanimous vote is served as sure, and nothing is cached,
            # since no benchmark has measured how often a unanimous answer is wrong.
            score, keep, cache = share, share >= 1.0, False
        else:
            features = signals(question, served.tokens).as_dict() | {VOTE_SHARE: share}
            score = policy.probability([features[name] for name in policy.features])
            keep, cache = score >= policy.threshold, score >= policy.cache_threshold
        return Decision(replace(base, score=score, method="ensemble"), keep, cache)

    async def events(self) -> AsyncIterator[Delta | Answer]:
        routing = self.router.routing
        question = last_user_text(self.request.messages)
        try:
            answers = await asyncio.gather(*(self._whole(job, len(self.prompt) if n == 0 else 0)
                                             for n, job in enumerate(self.jobs)))
        finally:
            for job in self.jobs:
                job.cancel()  # a client that left, or a draft that failed, frees every slot
        vote = majority([a.text for a in answers])
        served = replace(answers[vote.index], prompt_tokens=len(self.prompt))
        names = ["plain", *(role.name for role in DEFAULT_ROLES)]
        ballot = EnsembleVote(len(answers), round(vote.share, 6), names[vote.index])
        decision = self._vote(question, served, vote.share)
        sure = decision.confidence
        reason = None
        if not decision.keep and routing.teacher is not None:
            self.teacher_messages = integration_messages(self.request.messages, question, [a.text for a in answers])
            try:
                async for event in self._ask_teacher(served, sure):
                    yield replace(event, ensemble=ballot) if isinstance(event, Answer) else event
                return
            except TeacherError as exc:
                reason = str(exc)
                log.warning("teacher failed, serving the ensemble's answer: %s", reason)
        elif not decision.keep:
            reason = f"the student's drafts disagree ({vote.share:.0%} back the served one) and no teacher is configured"
        if not decision.keep:
            await self._keep_pending(served, sure, reason)
        yield Delta(served.text, list(served.tokens))
        if decision.cache and decision.keep:
            await self._remember(served.text, served.completion_tokens, "student", sure)
        yield Answer(model=self.student.name, route="student", completion=served, queued_s=self.queued_s,
                     elapsed_s=time.monotonic() - self.started, confidence=sure,
                     saved_usd=self.router.saved(served.prompt_tokens, served.completion_tokens),
                     degraded=not decision.keep, degraded_reason=reason, ensemble=ballot)


class PreRoutedRun(StudentRun):
    """The teacher answers first; the student is started only if the teacher cannot answer."""

    def __init__(self, router: Router, student: Student, prompt: list[int], params: SamplingParams,
                 request: ChatRequest, key: CacheKey | None, prompt_text: str, p_right: float, stream: bool,
                 method: str = "pre-route") -> None:
        super().__init__(router, student, prompt, params, None, request, key, prompt_text, hold=False)
        self.stream = stream
        self.pre_confidence = Confidence(p_right, 0.0, 0.0, 0.0, 0.0, 0, method=method)

    async def events(self) -> AsyncIterator[Delta | Answer]:
        try:
            async for event in self._ask_teacher(Completion("", "stop", len(self.prompt), []), self.pre_confidence):
                yield event
            return
        except TeacherError as exc:
            log.warning("teacher failed on a pre-routed question, the student answers: %s", exc)
            self.teacher_failed = str(exc)
        self.job = self.student.scheduler.submit(self.prompt, self.params, stream=self.stream)
        async for event in super().events():
            yield event
