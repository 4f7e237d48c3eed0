"""The OpenAI-compatible face of the router: maps HTTP requests to router calls and back."""

from __future__ import annotations

import asyncio
from dataclasses import replace
import logging
import time
import uuid
from typing import AsyncIterator, Callable

import psutil

from ..engine.scheduler import Overloaded
from ..engine.types import SamplingParams
from ..storage.ledger import AnswerLedger, AnswerRow
from ..routing.router import Answer, ChatRequest, Delta, PromptTooLong, Router, Run, UnknownModel
from .stats import Stats, quant_type
from ..protocol.stats import StatsSnapshot
from ..teacher import teacher_status
from .completions_schema import DEFAULT_MAX_TOKENS, parse_completion_request, text_chunk, text_completion_body
from .errors import ApiError
from .tools import FunctionSpec, parse_call
from .keepalive import with_keepalive
from .http import HttpRequest, HttpResponse, json_response
from .metrics import LiveFigures, Metrics, StudentLive
from .openai_schema import ChatCompletionRequest, ChunkWriter, completion_body, parse_chat_request, sse

log = logging.getLogger(__name__)


_NAMESPACE_HEADER = "x-athanor-namespace"


def namespace_for(request: HttpRequest) -> str:
    """The caller's cache namespace: its uid (from SO_PEERCRED), or `key:NAME` over TCP, optionally narrowed
    by a header.

    The header can only add a sub-namespace under the caller's own uid, never name another's.
    """
    owner = request.client or (str(request.peer.uid) if request.peer is not None else "anonymous")
    sub = request.headers.get(_NAMESPACE_HEADER, "").strip()
    if not sub:
        return owner
    if len(sub) > 64 or not all(c.isalnum() or c in "-_." for c in sub):
        raise ApiError(400, f"{_NAMESPACE_HEADER} must be 1-64 letters, digits, '-', '_' or '.'",
                       param=_NAMESPACE_HEADER)
    return f"{owner}/{sub}"


def cache_directives(request: HttpRequest) -> tuple[bool, bool]:
    """(may read the cache, may write it) from `Cache-Control: no-cache` / `no-store`."""
    directives = {d.strip().lower() for d in request.headers.get("cache-control", "").split(",")}
    return "no-cache" not in directives, "no-store" not in directives


def to_chat_request(body: ChatCompletionRequest, default_max_tokens: int, namespace: str = "default",
                    cache_read: bool = True, cache_write: bool = True) -> ChatRequest:
    """Wire request to router request: OpenAI's defaults, our limits."""
    limit = body.answer_limit
    params = SamplingParams(
        max_tokens=limit or default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stops,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else 0,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        logit_bias=body.biases,
        json_format=body.output_format(),
    )
    # A tool call is an action on the world as it is now (the weather, a calendar): never from the cache.
    tools = body.tool_mode != "none"
    return ChatRequest(messages=body.chat(), params=params, model=body.model, max_tokens_given=limit is not None,
                       namespace=namespace, cache_read=cache_read and not tools, cache_write=cache_write and not tools)


class Api:
    """Routes: POST /v1/chat/completions, GET /v1/models, GET /v1/stats, GET /healthz."""

    def __init__(self, router: Router, default_max_tokens: int, stats: Stats | None = None,
                 ledger: AnswerLedger | None = None, keepalive_s: float = 15.0,
                 connections: Callable[[], dict[str, int]] | None = None) -> None:
        self.router = router
        self.keepalive_s = keepalive_s
        self.default_max_tokens = default_max_tokens
        self.stats = stats or Stats()
        self.ledger = ledger
        self.metrics = Metrics(self._live)
        self.connections = connections
        """The server's connection counts, where one serves this API (daemon.serve)."""
        self._routes = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("GET", "/v1/models"): self.models,
            ("GET", "/v1/stats"): self.stats_view,
            ("GET", "/healthz"): self.health,
            ("GET", "/metrics"): self.metrics_view,
            ("POST", "/v1/completions"): self.text_completions,
        }

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            response = await self._dispatch(request)
        except ApiError as exc:
            response = json_response(exc.status, exc.body(), exc.headers)
        self.stats.record_status(response.status)
        self.metrics.http_requests.labels(str(response.status)).inc()
        return response

    def _live(self) -> LiveFigures:
        students = [StudentLive(name, int(b.get("running") or 0), int(b.get("waiting") or 0), b.get("mean_batch"),
                                _int_or_none(b.get("prompt_tokens_reused")), _int_or_none(b.get("prompt_tokens_computed")))
                    for name, b in self.router.loads()]
        return LiveFigures(students, self.router.cache_stats())

    async def metrics_view(self, request: HttpRequest) -> HttpResponse:
        body, content_type = await asyncio.to_thread(self.metrics.exposition)
        return HttpResponse(200, body, [("content-type", content_type)])

    async def _dispatch(self, request: HttpRequest) -> HttpResponse:
        path = request.path.rstrip("/") or "/"
        handler = self._routes.get((request.method, path))
        if handler is None:
            allowed = [method for method, route in self._routes if route == path]
            if allowed:
                raise ApiError(405, f"{request.method} is not allowed on {path}; use {', '.join(allowed)}",
                               headers=[("allow", ", ".join(allowed))])
            raise ApiError(404, f"no such endpoint: {request.method} {path}", code="not_found")
        return await handler(request)

    # --- endpoints -----------------------------------------------------------------------------

    async def health(self, request: HttpRequest) -> HttpResponse:
        storage = self.router.storage()
        queued, busy = self.router.queue_depth()
        # Still 200 when a store cannot be written: answers go on, and a restart would not free the disk.
        return json_response(200, {
            "status": "ok" if storage["ok"] else "degraded",
            "storage": storage,
            "students": list(self.router.students),
            "queued": queued,
            "busy": busy,
            "cache": self.router.has_cache,
            "teacher": getattr(self.router.teacher, "name", None),
        })

    async def models(self, request: HttpRequest) -> HttpResponse:
        data = []
        for student in self.router.students.values():
            info = student.info
            data.append({
                "id": student.name,
                "object": "model",
                "created": int(info.path.stat().st_mtime),
                "owned_by": "athanor",
                "athanor": {
                    "path": str(info.path),
                    "size_bytes": info.size_bytes,
                    "n_params": info.n_params,
                    "n_ctx": info.n_ctx,
                    "description": info.description,
                    "quant": quant_type(info.description),
                    "gpu_offload": info.gpu_offload,
                    "default": student.name == self.router.default,
                },
            })
        return json_response(200, {"object": "list", "data": data})

    async def stats_view(self, request: HttpRequest) -> HttpResponse:
        snapshot = StatsSnapshot.build(
            self.stats.snapshot(),
            cache=await asyncio.to_thread(self.router.cache_stats),
            teacher=teacher_status(self.router.teacher),
            confidence_threshold=self.router.confidence_threshold,
            students=self.router.loads(),
            storage=self.router.storage(),
            connections=self.connections() if self.connections is not None else None,
            rss_bytes=psutil.Process().memory_info().rss,  # the dashboard's memory figure
        )
        return json_response(200, snapshot.to_json())

    async def chat_completions(self, request: HttpRequest) -> HttpResponse:
        # The body is JSON whatever content-type says: `curl -d` sends form-urlencoded by default,
        # and llama.cpp's server accepts that too.
        body = parse_chat_request(request.body)
        cache_read, cache_write = cache_directives(request)
        chat = to_chat_request(body, self.default_max_tokens, namespace_for(request), cache_read, cache_write)
        if request.client is not None and request.client_budget_usd is not None:
            chat = replace(chat, payer=request.client.removeprefix("key:"), payer_budget_usd=request.client_budget_usd)
        self._check_vocabulary(chat)
        run = await self._admit(chat, stream=body.stream)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        log.info("%s %s: %s prompt tokens -> %s", request.request_id, completion_id, len(run.prompt), run.student.name)
        if body.stream:
            return _event_stream(self.keepalive_s, self._stream(run.events(), request, completion_id, run.student.name, body.logprobs,
                                              body.include_usage, time.monotonic(),
                                              body.functions() if body.tool_mode != "none" else None))
        answer = await self._final_answer(run, request)
        completion = answer.completion
        call = parse_call(completion.text, body.functions()) if body.tool_mode != "none" else None
        return json_response(200, completion_body(
            completion_id, answer.model, completion.text, completion.finish_reason, completion.prompt_tokens,
            completion.completion_tokens, completion.tokens, body.logprobs, answer.provenance(), tool_call=call,
        ))

    async def _final_answer(self, run: Run, request: HttpRequest) -> Answer:
        """Run a request nobody streams to its end; its answer, recorded."""
        answer = None
        async for event in run.events():
            if isinstance(event, Answer):
                answer = event
        assert answer is not None
        self._record(answer, request)
        return answer

    async def _admit(self, chat: ChatRequest, stream: bool) -> Run:
        """The router's admission, its refusals as OpenAI errors."""
        try:
            return await self.router.start(chat, stream=stream)
        except UnknownModel as exc:
            raise ApiError(404, str(exc), param="model", code="model_not_found") from None
        except PromptTooLong as exc:
            where = "max_tokens" if chat.max_tokens_given else "prompt" if chat.raw_prompt is not None else "messages"
            raise ApiError(400, str(exc), param=where, code="context_length_exceeded") from None
        except Overloaded as exc:
            raise ApiError(503, str(exc), type_="server_overloaded", code="overloaded",
                           headers=[("retry-after", str(exc.retry_after))]) from None

    async def text_completions(self, request: HttpRequest) -> HttpResponse:
        """`/v1/completions`: the prompt continued as it is, by the student alone (see completions_schema)."""
        body = parse_completion_request(request.body)
        params = SamplingParams(
            max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS, temperature=body.temperature, top_p=body.top_p,
            seed=body.seed, stop=body.stops, top_logprobs=body.logprobs or 0,
            frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty, logit_bias=body.biases)
        chat = ChatRequest(messages=[], params=params, model=body.model, max_tokens_given=body.max_tokens is not None,
                           namespace=namespace_for(request), cache_read=False, cache_write=False,
                           raw_prompt=body.text)
        self._check_vocabulary(chat)
        run = await self._admit(chat, stream=body.stream)
        completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            return _event_stream(self.keepalive_s, self._stream_text(run.events(), request, completion_id, run.student.name, body.logprobs,
                                                   body.include_usage, time.monotonic()))
        answer = await self._final_answer(run, request)
        c = answer.completion
        return json_response(200, text_completion_body(completion_id, answer.model, c.text, c.finish_reason,
                                                       c.prompt_tokens, c.completion_tokens, c.tokens, body.logprobs,
                                                       answer.provenance()))

    async def _stream_text(self, events: AsyncIterator[Delta | Answer], request: HttpRequest, completion_id: str, model: str,
                           logprobs: int | None, include_usage: bool, started: float) -> AsyncIterator[bytes]:
        created, offset, first = int(time.time()), 0, True
        try:
            async for event in events:
                if isinstance(event, Delta):
                    if event.text or (logprobs is not None and event.tokens):
                        if first:
                            self.metrics.ttft.observe(time.monotonic() - started)
                            first = False
                        yield text_chunk(completion_id, model, event.text, None, created, event.tokens, logprobs,
                                         offset)
                        offset += len(event.text)
                    continue
                self._record(event, request)
                c = event.completion
                yield text_chunk(completion_id, model, "", c.finish_reason, created, extra=event.provenance())
                if include_usage:
                    yield text_chunk(completion_id, model, "", None, created, usage_of=(c.prompt_tokens,
                                                                                         c.completion_tokens))
            yield sse("[DONE]")
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    def _check_vocabulary(self, chat: ChatRequest) -> None:
        """logit_bias names the student's own token ids: one past its vocabulary is a 400; JSON mode needs
        a student that can hold its output to a grammar (an unknown model is left to the router's 404)."""
        if not chat.params.logit_bias and chat.params.json_format is None:
            return
        try:
            info = self.router.student(chat.model).info
        except UnknownModel:
            return
        if chat.params.json_format is not None and not info.constrains_output:
            raise ApiError(400, f"response_format: the student {info.name!r} ({info.description}) cannot hold its "
                                "answer to JSON; ask a GGUF student (llama.cpp), or for text", param="response_format",
                           code="unsupported_value")
        n_vocab = info.n_vocab
        for token, _ in chat.params.logit_bias:
            if token >= n_vocab:
                raise ApiError(400, f"logit_bias: token id {token} is outside the vocabulary of "
                                    f"{n_vocab} tokens of the student answering", param="logit_bias",
                               code="invalid_value")

    async def _stream(
        self, events: AsyncIterator[Delta | Answer], request: HttpRequest, completion_id: str, model: str,
        logprobs: bool, include_usage: bool,
        started: float, functions: list[FunctionSpec] | None = None,
    ) -> AsyncIterator[bytes]:
        """SSE chunks as the answer comes. With tools offered the text is held to its end: only then is it
        known to be a call (sent as one tool_calls delta) or words (sent as one content delta)."""
        chunks = None
        first = True
        held: list[str] = []
        try:
            async for event in events:
                if chunks is None:  # the route is known with the first event
                    chunks = ChunkWriter(completion_id, model, {"route": event.route})
                    yield chunks.role()
                if isinstance(event, Delta) and functions is not None:
                    held.append(event.text)
                    continue
                if isinstance(event, Answer) and functions is not None:
                    call = parse_call("".join(held), functions)
                    if call is not None:
                        yield chunks.tool_call(call)
                        self._record(event, request)
                        yield chunks.finish("tool_calls", event.provenance())
                        if include_usage:
                            yield chunks.usage(event.completion.prompt_tokens, event.completion.completion_tokens,
                                               event.provenance())
                        continue
                    if held:
                        yield chunks.content("".join(held))
                if isinstance(event, Delta):
                    if event.text or (logprobs and event.tokens):
                        if first:
                            self.metrics.ttft.observe(time.monotonic() - started)
                            first = False
                        yield chunks.content(event.text, event.tokens if logprobs else None)
                    continue
                self._record(event, request)
                completion = event.completion
                yield chunks.finish(completion.finish_reason, event.provenance())
                if include_usage:
                    yield chunks.usage(completion.prompt_tokens, completion.completion_tokens, event.provenance())
            yield sse("[DONE]")
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    def _record(self, answer: Answer, request: HttpRequest) -> None:
        request.notes.route = answer.route
        self.stats.record_answer(answer)
        completion = answer.completion
        self.metrics.observe_answer(answer.route, completion.prompt_tokens, completion.completion_tokens,
                                    answer.elapsed_s, answer.queued_s, answer.cost_usd, answer.saved_usd)
        if self.ledger is not None:
            self.ledger.add(AnswerRow(time.time(), answer.route, answer.model, completion.prompt_tokens,
                                      completion.completion_tokens, answer.cost_usd, answer.saved_usd,
                                      answer.degraded))


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _event_stream(keepalive_s: float, chunks: AsyncIterator[bytes]) -> HttpResponse:
    """A 200 whose body is server-sent events, sent as `chunks` yields them, kept alive while they are silent."""
    return HttpResponse(200, headers=[("content-type", "text/event-stream"), ("cache-control", "no-cache")],
                        stream=with_keepalive(chunks, keepalive_s))
