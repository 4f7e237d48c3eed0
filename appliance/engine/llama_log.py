"""llama.cpp's own log, routed into Python's logging at debug level (seen with `--verbose` only).

What goes wrong reaches users as errors that name the file and the fix; llama.cpp's lines are
detail. Installed by this project rather than left to llama-cpp-python, whose callback maps ggml's
levels one off (it prints ggml's warnings as errors), and before anything calls llama.cpp: the
quantizer alone writes a line per tensor.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp

_LEVELS = {1: "debug", 2: "info", 3: "warning", 4: "error"}
_CONTINUED = 5
_log = logging.getLogger("llama.cpp")
_last_level = ["debug"]
_quiet = threading.local()


def _forward_line(level: int, text: bytes, _data: ctypes.c_void_p) -> None:
    if level != _CONTINUED:
        _last_level[0] = _LEVELS.get(level, "debug")
    if _log.isEnabledFor(logging.DEBUG) and not getattr(_quiet, "on", False):
        _log.debug("%s: %s", _last_level[0], text.decode(errors="replace").rstrip())


# The C callback wrapping `_forward_line`, kept at module level so that it outlives every call into llama.cpp.
_forward = llama_cpp.llama_log_callback(_forward_line)


def install() -> None:
    """Route llama.cpp's log (idempotent)."""
    llama_cpp.llama_log_set(_forward, ctypes.c_void_p(0))


def quiet(on: bool) -> None:
    """Silence this thread's llama.cpp lines while `on`: a step cut short on purpose is logged as a failure."""
    _quiet.on = on
