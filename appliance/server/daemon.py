"""The resident daemon: load the students once, listen on the Unix socket, shut down cleanly."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Callable

from .. import paths
from ..cache import SemanticCache, load_embedder
from ..cache.store import cache_path
from ..config import AthanorConfig, api_keys_path, load_config
from ..engine.scheduler import Scheduler
from ..errors import AthanorError
from ..protocol.distill_log import DistillLog
from ..teacher.limits import PayerLedgers
from ..storage.ledger import LEDGER_FILE, AnswerLedger
from ..routing.router import Router, Routing, Student
from ..engine.model_source import open_engine, resolve_student
from ..teacher import make_teacher
from ..teacher.pricing import price_for
from .access_log import AccessLog
from .admin import AdminApi
from .cache_api import CacheApi
from .report_api import ReportApi
from .api_keys import Cors, KeyAuth, read_keys
from .embeddings_api import EmbeddingsApi
from .errors import openai_error
from ..routing.decide import load_policy, serving_past_outcomes
from .api import Api
from .http import ConnectionStats, HttpServer, Limits, fit_connections_to_fd_limit
from .reload import Reloader
from .sd_notify import notify

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


def load_students(config: AthanorConfig) -> dict[str, Student]:
    """Load every configured student ([student], then each of [[students]]) into its engine and scheduler.

    A path may name a GGUF file, an ONNX folder or an export (manifest checksums are verified first).
    If one student fails to load, those already loaded are released and the error propagates.
    """
    students: dict[str, Student] = {}
    try:
        for cfg in (config.student, *config.students):
            source = resolve_student(cfg, paths.models_dir())
            engine = open_engine(cfg, source)
            # The chat template's first rendering, here rather than in the first request (which renders
            # the prompt even when the cache answers it).
            engine.chat_prompt([{"role": "user", "content": "warm-up"}])
            scheduler = Scheduler(engine, config.server.max_queue, cfg.name)
            students[cfg.name] = Student(cfg.name, engine, scheduler, version=source.version)
    except BaseException:
        for student in students.values():
            student.scheduler.close()
            student.engine.close()
        raise
    return students


def build_routing(config: AthanorConfig) -> Routing:
    """The optional parts around the students: cache, teacher, distillation log, price of a teacher answer."""
    state = paths.state_dir()
    routing = Routing(
        confidence_threshold=config.routing.confidence_threshold,
        confidence_quantile=config.routing.confidence_quantile,
        policy=load_policy(config.routing.router),
        early_policy=load_policy(config.routing.router, early=True),
        pre_policy=load_policy(config.routing.router, pre=True),
        ensemble_policy=load_policy(config.routing.router, ensemble=True),
        hold_tokens=config.routing.hold_tokens,
        explore_share=config.routing.explore_share,
        mode=config.routing.mode,
    )
    if config.cache.enabled:
        # One thread for embedding, and OpenMP threads that sleep instead of spinning when idle:
        # torch's default spin-wait after each embedding steals the cores llama.cpp decodes on.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        embedder = load_embedder(config.cache.embedder, threads=1)
        routing.cache = SemanticCache(cache_path(config.cache), embedder, config.cache, health=routing.storage)
        # Load the embedder's weights, jieba's dictionary, wordfreq's lists and Cilin, and start FAISS's
        # threads, now, not on the first lookup (seconds that would land on one user's request).
        routing.cache.warm_up()
    if config.teacher.provider != "none":
        routing.teacher = make_teacher(config.teacher, state, health=routing.storage)
        routing.payers = PayerLedgers(paths.payer_spend_dir(), health=routing.storage)
    # With a teacher it logs the teacher's answers; with or without, the unsure ones it served alone (pending).
    routing.distill_log = DistillLog(state / "distill.jsonl")
    routing.ledger = AnswerLedger(state / LEDGER_FILE, health=routing.storage)
    if routing.teacher is not None:
        routing.price = routing.teacher.estimate_cost
    else:
        routing.price = _price_or_none(config)
    return routing


def _price_or_none(config: AthanorConfig):
    """Even without a teacher, `saved_usd` can use the configured teacher model's price when it is known."""
    try:
        return price_for(config.teacher).cost
    except AthanorError:
        return None


def build_router(config: AthanorConfig) -> Router:
    students = load_students(config)
    routing = build_routing(config)
    embed = routing.cache.embed_texts if routing.cache is not None else None
    routing.past_outcomes = serving_past_outcomes(config, embed, students)
    return Router(students, config.student.name, routing)


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_FDS/LISTEN_PID), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.setblocking(False)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    return sock


def socket_folder(folder: Path, socket_mode: int) -> None:
    """Create the socket's folder, or check the one there: no other user may own it or write to it.

    A folder someone else controls (a `/tmp/athanor-<uid>` made before the daemon) would let them
    swap the socket for their own and read every question. A folder made here can be searched only
    by those `socket_mode` lets connect (0660: owner and group).
    """
    searchable = 0o700 | (0o050 if socket_mode & 0o070 else 0) | (0o005 if socket_mode & 0o007 else 0)
    for missing in reversed(list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))):
        missing.mkdir(exist_ok=True)
        os.chmod(missing, searchable)  # not the umask's 0700: that one keeps the state files private
    info = folder.stat()
    if info.st_uid not in (os.getuid(), 0):
        raise AthanorError(f"{folder} belongs to uid {info.st_uid}, not to this user, who could replace the socket; "
                           "remove it or set [server].socket elsewhere")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise AthanorError(f"{folder} is writable by every user (mode {stat.S_IMODE(info.st_mode):04o}), who could "
                           "replace the socket; `chmod o-w` it or set [server].socket elsewhere")


def bind_socket(path: Path, mode: int) -> socket.socket:
    """Listen on `path`, replacing a stale socket file but never a live daemon's or a regular file."""
    socket_folder(path.parent, mode)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AthanorError(f"{path} exists and is not a socket; remove it or set [server].socket elsewhere")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink()  # left by a daemon that died
        else:
            raise AthanorError(f"another daemon is already listening on {path}; stop it or set [server].socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Create the socket file with the final mode from the start, so no client ever sees it wider.
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(config: AthanorConfig, router: Router | None = None, shutdown_timeout_s: float = 30.0,
                read_config: Callable[[], AthanorConfig] | None = None) -> None:
    """Run until SIGTERM/SIGINT; then stop accepting, let in-flight answers finish, release the model.

    SIGHUP reloads: `read_config` (default: the same file and environment again) gives the new config,
    whose students replace the running ones without dropping an answer (see `reload.py`).
    """
    # A SIGHUP while the model loads would kill the daemon (its default action); the handler comes later.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    router = router or build_router(config)
    limits = Limits(
        max_body_bytes=config.server.max_body_bytes,
        header_timeout_s=config.server.header_timeout_s,
        idle_timeout_s=config.server.idle_timeout_s,
        max_connections=fit_connections_to_fd_limit(config.server.max_connections),
        max_connections_per_user=config.server.max_connections_per_user,
    )
    connections = ConnectionStats(limits.max_connections)
    api = Api(router, config.student.default_max_tokens, ledger=router.routing.ledger,
              keepalive_s=config.server.sse_keepalive_s, connections=connections.snapshot)

    def reloaded(new: AthanorConfig) -> None:
        api.default_max_tokens = new.student.default_max_tokens

    reloader = Reloader(router, config, read_config or (lambda: load_config(config.source)), load_students,
                        retire_timeout_s=shutdown_timeout_s, on_config=reloaded)
    embeddings = EmbeddingsApi(api, lambda: router.routing.cache.embedder if router.routing.cache else None,
                               lambda: load_embedder(config.cache.embedder, threads=1))
    cache_api = CacheApi(embeddings, lambda: router.routing.cache, os.getuid())
    handler = AdminApi(ReportApi(cache_api, paths.state_dir()), reloader, os.getuid())
    tcp = config.server.tcp_address()
    if tcp is not None:
        keys = api_keys_path(config)
        handler = Cors(KeyAuth(handler, keys), config.server.cors_origins)
    server = HttpServer(AccessLog(handler), limits, error_payload=openai_error, stats=connections)
    sock = inherited_socket()
    owned_path = None
    if sock is None:
        sock = bind_socket(config.server.socket, config.server.socket_mode)
        owned_path = config.server.socket
    await server.start(sock)
    if tcp is not None:
        try:
            host, port = await server.start_tcp(*tcp)
        except OSError as exc:
            raise AthanorError(f"cannot listen on {config.server.listen} ([server].listen): {exc.strerror or exc}; "
                               "choose a free port or an address of this machine") from None
        try:
            count = len(read_keys(keys)) if keys.is_file() else 0
        except (AthanorError, OSError) as exc:  # requests over TCP say so too, with the fix
            log.error("the API key file %s cannot be used: %s", keys, exc)
            count = 0
        log.info("listening on TCP %s:%d too; %d API keys in %s%s", host, port, count, keys,
                 "" if count else " (none yet: every request there gets 401; `athanor keys add NAME`)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()

    def hangup() -> None:
        if stop.is_set():
            log.warning("reload ignored: shutting down")
            return
        task = asyncio.ensure_future(reloader.reload())
        reloads.add(task)  # held here: the loop keeps only weak references to tasks
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    where = owned_path or "inherited socket"
    log.info("athanor ready on %s; students: %s", where, ", ".join(router.students))
    print(f"athanor: serving {', '.join(router.students)} on {where}", flush=True)
    notify("READY=1", f"STATUS=serving on {where}")
    try:
        await stop.wait()
    finally:
        notify("STOPPING=1")
        log.info("shutting down: finishing in-flight requests (up to %.0f s)", shutdown_timeout_s)
        await server.stop_accepting()
        await server.drain(shutdown_timeout_s)
        if reloads:  # a reload under way finishes its swap, so the students closed below are the live ones
            await asyncio.gather(*reloads, return_exceptions=True)
        for student in router.students.values():
            student.scheduler.close()
            student.engine.close()
        await _close_routing(router.routing)
        if owned_path is not None:
            owned_path.unlink(missing_ok=True)


async def _close_routing(routing: Routing) -> None:
    """Flush what the cache and the log hold and release the teacher's connections."""
    if routing.teacher is not None:
        await routing.teacher.aclose()
    if routing.cache is not None:
        routing.cache.close()
    if routing.distill_log is not None:
        routing.distill_log.close()
    if routing.payers is not None:
        routing.payers.close()
    if routing.ledger is not None:
        routing.ledger.close()
