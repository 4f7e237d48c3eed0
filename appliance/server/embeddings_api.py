"""`POST /v1/embeddings`: OpenAI's embeddings endpoint, served by the cache's sentence encoder.

The encoder is already in memory for the cache (multilingual: Chinese and English), so a client that
wants vectors (a RAG index, Open WebUI's document search) needs no second model; with the cache off,
the same encoder is loaded the first time embeddings are asked for. Vectors are unit
length; `encoding_format: "base64"` (what the official SDK asks for by default) packs little-endian
float32, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, ValidationError

from ..cache.embedder import Embedder
from .errors import ApiError
from .http import Handler, HttpRequest, HttpResponse, json_response
from .openai_schema import _describe, _Strict, parse_json_body

PATH = "/v1/embeddings"
MAX_INPUTS = 256
MAX_CHARS = 8192
"""Per input: the encoder reads sentences, not documents; a longer text is a 400, never cut unseen."""


class EmbeddingsRequest(_Strict):
    input: str | list[str] = Field(min_length=1)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse_embeddings_request(body: bytes, embedder: Embedder) -> EmbeddingsRequest:
    """Bytes to a request this encoder can answer, or an `ApiError` naming the parameter."""
    data = parse_json_body(body)
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    value = data.get("input")
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value) or (
            isinstance(value, list) and value and all(isinstance(v, list) for v in value)):
        raise ApiError(400, "input: token arrays are not supported: this encoder has its own tokenizer; send text",
                       param="input", code="unsupported_value")
    try:
        request = EmbeddingsRequest.model_validate(data)
    except ValidationError as exc:
        param, message, code = _describe(exc.errors(), data)
        raise ApiError(400, f"{param}: {message}" if param else message, param=param, code=code) from None
    texts = request.texts()
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"input: at most {MAX_INPUTS} texts per request, got {len(texts)}; send several requests",
                       param="input", code="invalid_value")
    for index, text in enumerate(texts):
        if not text.strip():
            raise ApiError(400, f"input[{index}] is empty", param="input", code="invalid_value")
        if len(text) > MAX_CHARS:
            raise ApiError(400, f"input[{index}] has {len(text)} characters, over {MAX_CHARS}: this encoder reads "
                                "sentences; split the text", param="input", code="invalid_value")
    if request.model not in (None, embedder.name):
        raise ApiError(404, f"model {request.model!r} is not served here; embeddings come from {embedder.name!r}",
                       type_="invalid_request_error", param="model", code="model_not_found")
    if request.dimensions not in (None, embedder.dim):
        raise ApiError(400, f"dimensions: {embedder.name} gives {embedder.dim}; it is not trained to be cut shorter",
                       param="dimensions", code="unsupported_value")
    return request


def embeddings_body(vectors: np.ndarray, request: EmbeddingsRequest, model: str, tokens: int) -> dict[str, Any]:
    """OpenAI's response for `vectors` (one row per input, in order)."""
    rows = np.asarray(vectors, dtype="<f4")
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(row.tobytes()).decode() if request.encoding_format == "base64"
             else [float(x) for x in row]} for i, row in enumerate(rows)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class EmbeddingsApi:
    """Answers `POST /v1/embeddings` itself and hands every other request to `inner`."""

    def __init__(self, inner: Handler, embedder: Callable[[], Embedder | None], load: Callable[[], Embedder]) -> None:
        """`embedder`: the cache's encoder when the cache is on; `load`: loads one (the first time embeddings
        are asked for with the cache off, then kept)."""
        self.inner = inner
        self.embedder = embedder
        self._load = load
        self._own: Embedder | None = None
        self._loading = asyncio.Lock()

    async def _encoder(self) -> Embedder:
        shared = self.embedder()
        if shared is not None:
            return shared
        async with self._loading:
            if self._own is None:
                self._own = await asyncio.to_thread(self._load)
        return self._own

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if (request.path.rstrip("/") or "/") != PATH:
            return await self.inner(request)
        try:
            if request.method != "POST":
                raise ApiError(405, f"{request.method} is not allowed on {PATH}; use POST", headers=[("allow", "POST")])
            embedder = await self._encoder()
            parsed = parse_embeddings_request(request.body, embedder)
            texts = parsed.texts()
            vectors = await asyncio.to_thread(embedder.embed, texts)
            tokens = await asyncio.to_thread(embedder.count_tokens, texts)
            return json_response(200, embeddings_body(vectors, parsed, embedder.name, tokens))
        except ApiError as exc:
            return json_response(exc.status, exc.body(), exc.headers)
