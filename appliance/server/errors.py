"""OpenAI-style error objects: the API's own, and the shape it gives the errors the HTTP layer answers."""

from __future__ import annotations


class ApiError(Exception):
    """A request the API refuses: becomes `{"error": {...}}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or []

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error(status: int, message: str, code: str | None = None) -> dict:
    """The body of an error the HTTP server answers itself (an `ErrorPayload`), in OpenAI's shape."""
    # The HTTP layer answers its own 500 (a handler that raised) and 503 (too many connections); every
    # other status it sends is about the request the client sent.
    type_ = {500: "server_error", 503: "server_overloaded"}.get(status, "invalid_request_error")
    return error_body(message, type_, code=code)
