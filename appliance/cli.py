"""`athanor`: the one console command. User errors become one line on stderr and an exit code."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .clients.daemon_client import AthanorClient
from .config import AthanorConfig, load_config
from .errors import AthanorError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AthanorError as exc:
            if os.environ.get("ATHANOR_DEBUG"):
                raise
            click.echo(f"athanor: {exc}", err=True)
            sys.exit(exc.exit_code)


def _config(ctx: click.Context, socket: Path | None = None) -> AthanorConfig:
    config = load_config(ctx.obj["config_path"])
    if socket is not None:
        config.server.socket = socket
    return config


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="athanor")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Config file (default: $ATHANOR_CONFIG, ~/.config/athanor/athanor.toml, /etc/athanor/athanor.toml).")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Athanor: a local student model served over a Unix socket, distilled from a cloud teacher."""
    ctx.obj = {"config_path": config_path}


_socket_option = click.option("--socket", type=click.Path(path_type=Path), default=None,
                              help="Daemon socket (default: [server].socket).")


def _piped_text(wait_s: float = 0.2) -> str:
    """Text piped or redirected into standard input, or "" for a terminal. A pipe that stays open with
    nothing in it (a CI runner's, a service's) is not waited on past `wait_s`."""
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        return ""
    try:
        ready, _, _ = select.select([stdin], [], [], wait_s)
    except (ValueError, OSError, io.UnsupportedOperation):  # no file descriptor (a test runner's stream)
        return stdin.read()
    return stdin.read() if ready else ""


def _stream_answer(client: AthanorClient, messages: list[dict[str, str]], params: dict) -> tuple[str, dict]:
    """Print an answer as it streams; (its text, its usage and route)."""
    parts, info = [], {}
    for chunk in client.stream_chat(messages, **params, stream_options={"include_usage": True}):
        info["route"] = chunk.get("route", info.get("route"))
        for field in ("degraded", "degraded_reason"):
            if field in chunk:
                info[field] = chunk[field]
        if chunk.get("usage"):
            info.update(chunk["usage"])
        for choice in chunk.get("choices", []):
            text = choice.get("delta", {}).get("content") or ""
            parts.append(text)
            click.echo(text, nl=False)
    click.echo()
    return "".join(parts), info


@main.command()
@_socket_option
@click.option("--system", "system_prompt", default=None, help="System message.")
@click.option("-m", "--model", default=None, help="Student to ask (default: the daemon's default).")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--usage", "show_usage", is_flag=True, help="After each answer: its route and tokens (stderr).")
@click.pass_context
def chat(ctx: click.Context, socket: Path | None, system_prompt: str | None, model: str | None,
         max_tokens: int | None, temperature: float | None, show_usage: bool) -> None:
    """Talk with the daemon; the conversation is kept (`/reset` forgets it; `/exit`, Ctrl-D or an empty line at
    the start ends it)."""
    config = _config(ctx, socket)
    start = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages = list(start)
    params = {k: v for k, v in {"model": model, "max_tokens": max_tokens, "temperature": temperature}.items()
              if v is not None}
    with AthanorClient(config.server.socket) as client:
        while True:
            try:
                line = click.prompt(">", prompt_suffix=" ", default="", show_default=False)
            except (EOFError, click.Abort):
                break
            line = line.strip()
            if line in ("/exit", "/quit") or (not line and not messages[len(start):]):
                break
            if not line:
                continue
            if line == "/reset":
                messages = list(start)
                click.echo("(conversation forgotten)", err=True)
                continue
            messages.append({"role": "user", "content": line})
            answer, info = _stream_answer(client, messages, params)
            messages.append({"role": "assistant", "content": answer})
            if show_usage:
                click.echo(f"[{info.get('route')}, {info.get('prompt_tokens')} prompt tokens, "
                           f"{info.get('completion_tokens')} answer tokens]", err=True)
            _warn_if_unsure(info)


@main.command()
@_socket_option
@click.option("--student", "student_path", type=click.Path(path_type=Path), default=None,
              help="GGUF file to serve (default: [student].path, else the embedded SmolLM2-135M).")
@click.option("-v", "--verbose", is_flag=True, help="Log each request.")
@click.pass_context
def serve(ctx: click.Context, socket: Path | None, student_path: Path | None, verbose: bool) -> None:
    """Run the daemon in the foreground (systemd runs it this way too)."""
    from .config import parse_config
    from .server.daemon import serve as run_daemon
    from .server.logs import configure_logging

    def read_config() -> AthanorConfig:
        # Also what a reload (SIGHUP) re-reads: the file and environment again, the options still applied.
        config = _config(ctx, socket)
        if student_path is not None:
            data = config.model_dump()
            data["student"]["path"] = student_path
            config = parse_config(data, config.source)
        return config

    config = read_config()
    # The cache, the spend ledger and the distillation log hold every caller's questions and answers:
    # readable by the daemon's user alone, also under the unit's UMask=0027 (its group is the socket's).
    os.umask(os.umask(0o077) | 0o077)
    configure_logging(verbose)
    asyncio.run(run_daemon(config, read_config=read_config))


@main.command()
@click.argument("question", required=False)
@_socket_option
@click.option("--system", "system_prompt", default=None, help="System message.")
@click.option("-m", "--model", default=None, help="Student to ask (default: the daemon's default).")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--no-stream", is_flag=True, help="Wait for the whole answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the full response object.")
@click.pass_context
def ask(ctx: click.Context, question: str | None, socket: Path | None, system_prompt: str | None, model: str | None,
        max_tokens: int | None, temperature: float | None, seed: int | None, no_stream: bool, as_json: bool) -> None:
    """Ask the daemon a QUESTION; the answer streams as it is generated.

    Without QUESTION, or with `-`, the question is read from standard input (`athanor ask < q.txt`).
    """
    if question is None or question == "-":
        stdin = sys.stdin
        if stdin.isatty():
            click.echo("athanor: reading the question from standard input (end it with Ctrl-D)", err=True)
        question = stdin.read()
        if not question.strip():
            raise click.UsageError("no question: give one as an argument or on standard input")
        question = question.strip()
    else:
        # `cat notes.txt | athanor ask "summarise"`: the piped text, then the question (as `llm` does).
        piped = _piped_text().strip()
        if piped:
            question = f"{piped}\n\n{question}"
    config = _config(ctx, socket)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    params = {k: v for k, v in {"model": model, "max_tokens": max_tokens, "temperature": temperature,
                                "seed": seed}.items() if v is not None}
    with AthanorClient(config.server.socket) as client:
        if no_stream or as_json:
            answer = client.chat(messages, **params)
            if as_json:
                click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
            else:
                click.echo(answer["choices"][0]["message"]["content"])
                _warn_if_unsure(answer)
            return
        _, info = _stream_answer(client, messages, params)
        if info.get("route") and sys.stderr.isatty():
            click.echo(click.style(f"[{info['route']}]", dim=True), err=True)
        _warn_if_unsure(info)


def _warn_if_unsure(answer: dict[str, Any]) -> None:
    """An answer the daemon flagged (an unsure student with no teacher, a teacher that failed) says so on
    stderr, whatever stdout is piped to: read as sure, it would be wrong silently."""
    if answer.get("degraded"):
        reason = answer.get("degraded_reason") or "the daemon flagged it"
        click.echo(f"athanor: this answer may be wrong: {reason}", err=True)


@main.command()
@_socket_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models(ctx: click.Context, socket: Path | None, as_json: bool) -> None:
    """List the students the daemon has loaded."""
    with AthanorClient(_config(ctx, socket).server.socket) as client:
        data = client.models()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for model in data:
        meta = model.get("athanor", {})
        mark = "*" if meta.get("default") else " "
        size = meta.get("size_bytes", 0) / 1e6
        click.echo(f"{mark} {model['id']:<28} {meta.get('description', ''):<22} {size:8.1f} MB  ctx {meta.get('n_ctx')}")


@main.command()
@_socket_option
@click.pass_context
def health(ctx: click.Context, socket: Path | None) -> None:
    """Check that the daemon answers: exit 0 when healthy, 1 when it reports itself degraded (a store it
    cannot write: answers go on, see `storage`), 3 when it cannot be reached."""
    with AthanorClient(_config(ctx, socket).server.socket) as client:
        report = client.health()
    click.echo(json.dumps(report))
    if report.get("status") != "ok":
        failing = [name for name, store in report.get("storage", {}).get("stores", {}).items() if store.get("failing")]
        detail = f": cannot write {', '.join(failing)}" if failing else ""
        click.echo(f"athanor: the daemon is {report.get('status', 'in an unknown state')}{detail}", err=True)
        sys.exit(1)


@main.command()
@_socket_option
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.pass_context
def top(ctx: click.Context, socket: Path | None, interval: float) -> None:
    """Live dashboard: traffic, routes, money, students, GPU and host health (q quits, ? helps)."""
    from .paths import state_dir
    from .tui.app import Dashboard  # Textual loads only for this command

    config = _config(ctx, socket)
    Dashboard(config.server.socket, interval_s=interval, state_dir=state_dir()).run()


@main.command()
@_socket_option
@click.pass_context
def reload(ctx: click.Context, socket: Path | None) -> None:
    """Hot-reload the daemon: re-read its config, load the student, swap it in (no answer is dropped).

    Only the daemon's own user or root may; as a service, `sudo systemctl reload athanor` does the same.
    """
    with AthanorClient(_config(ctx, socket).server.socket) as client:
        outcome = client.reload()
    click.echo(outcome["message"])


@main.group()
def cache() -> None:
    """Look into the semantic cache; forget or clear entries (the daemon's user or root)."""


@cache.command("stats")
@_socket_option
@click.pass_context
def cache_stats(ctx: click.Context, socket: Path | None) -> None:
    """Entries, hits, misses, uncovered questions, size on disk."""
    with AthanorClient(_config(ctx, socket).server.socket) as client:
        click.echo(json.dumps(client.cache("stats"), indent=1, ensure_ascii=False))


@cache.command("why")
@click.argument("question")
@click.option("-k", "k", type=click.IntRange(1, 50), default=5, show_default=True, help="Neighbours to show.")
@click.option("--namespace", default=None, help="Another namespace (the daemon's user or root only).")
@_socket_option
@click.pass_context
def cache_why(ctx: click.Context, question: str, k: int, namespace: str | None, socket: Path | None) -> None:
    """The nearest cached questions, their similarity, and whether each would be served and why not."""
    with AthanorClient(_config(ctx, socket).server.socket) as client:
        result = client.cache("why", question=question, k=k, namespace=namespace)
    if result.get("uncovered"):
        click.echo(f"never served from the cache: {result['uncovered']}")
    if not result["neighbours"]:
        click.echo(f"nothing cached in namespace {result['namespace']}")
    for n in result["neighbours"]:
        mark = click.style("HIT ", fg="green") if n["would_hit"] else click.style("miss", fg="red")
        click.echo(f"{mark} #{n['entry_id']} {n['similarity']:.3f} {n['question']!r}  ({n['reason']})")


@cache.command("forget")
@click.option("--id", "entry_id", type=int, default=None, help="One entry, by the id `why` shows.")
@click.option("--namespace", default=None, help="A whole namespace (a uid, or uid/name).")
@click.option("--question", default=None, help="Every entry cached for exactly this question.")
@_socket_option
@click.pass_context
def cache_forget(ctx: click.Context, entry_id: int | None, namespace: str | None, question: str | None,
                 socket: Path | None) -> None:
    """Delete cached answers (the daemon's user or root)."""
    if entry_id is None and namespace is None and question is None:
        raise click.UsageError("name what to forget: --id, --namespace or --question")
    with AthanorClient(_config(ctx, socket).server.socket) as client:
        removed = client.cache("forget", id=entry_id, namespace=namespace, question=question)["removed"]
    click.echo(f"forgot {removed} entries")


@cache.command("clear")
@click.confirmation_option(prompt="Delete every cached answer?")
@_socket_option
@click.pass_context
def cache_clear(ctx: click.Context, socket: Path | None) -> None:
    """Delete every cached answer (the daemon's user or root)."""
    with AthanorClient(_config(ctx, socket).server.socket) as client:
        click.echo(f"cleared {client.cache('clear')['removed']} entries")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The checks as JSON on stdout (name, status, message, fix).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the installation (config, model, socket, GPU, teacher key, disk) and print what to fix."""
    from dataclasses import asdict

    from .doctor import failed, format_report, run_checks

    checks = run_checks(ctx.obj["config_path"])
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks]))
        sys.exit(1 if failed(checks) else 0)
    colours = {"OK": "green", "WARN": "yellow", "FAIL": "red"}
    for line in format_report(checks).splitlines():
        word = line.split(" ", 1)[0]
        click.echo(click.style(line, fg=colours[word]) if word in colours else line)
    if failed(checks):
        sys.exit(1)


@main.command()
@click.option("--since", default=None, help="First day to count, YYYY-MM-DD (default: everything).")
@click.option("--json", "as_json", is_flag=True, help="The figures as JSON on stdout.")
@click.option("--png", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also draw cumulative savings against spend (default: <state>/report.png).")
@click.pass_context
def report(ctx: click.Context, since: str | None, as_json: bool, png: Path | None) -> None:
    """Money spent and saved, the teacher's share and the return on distillation, per day and month."""
    from .paths import state_dir
    from .report.read import ledger_path, read_report, since_timestamp
    from .report.view import plot_report, print_report

    if since is not None:
        try:
            since_timestamp(since)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    state = state_dir()
    built = read_report(state, since)
    if as_json:
        click.echo(json.dumps(built.as_dict(), indent=2))
        return
    if not built.days:
        click.echo(f"no answers recorded yet in {ledger_path(state)}: the daemon writes one row per answer")
        return
    print_report(built)
    click.echo(f"chart: {plot_report(built, png or state / 'report.png')}")


@main.group()
def keys() -> None:
    """API keys for the TCP listener ([server].listen): stored hashed, each its own cache namespace."""


def _keys_file(ctx: click.Context) -> Path:
    from .config import api_keys_path

    return api_keys_path(_config(ctx))


def _budget(value: str | None) -> float | None:
    if value is None or value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give USD (e.g. 0.50) or `none`") from None


@keys.command("add")
@click.argument("name")
@click.option("--daily-budget", "daily_budget", default=None, metavar="USD",
              help="The most the teacher may cost for this key's requests per UTC day (default: only "
                   "[teacher].daily_budget_usd, which caps all). Over it, the student answers, flagged degraded.")
@click.pass_context
def keys_add(ctx: click.Context, name: str, daily_budget: str | None) -> None:
    """Make a key for NAME and print it (once: only its hash is kept)."""
    from .server.api_keys import add_key

    path = _keys_file(ctx)
    key = add_key(path, name, _budget(daily_budget))
    click.echo(key)
    click.echo(f"stored as a hash in {path}; the daemon takes it at the next request. Clients send "
               "`Authorization: Bearer <key>` (OpenAI clients: api_key=<key>).", err=True)


@keys.command("budget")
@click.argument("name")
@click.argument("usd")
@click.pass_context
def keys_budget(ctx: click.Context, name: str, usd: str) -> None:
    """Set NAME's daily teacher budget in USD (`none`: only the global cap), from the daemon's next request."""
    from .server.api_keys import set_budget

    set_budget(_keys_file(ctx), name, _budget(usd))
    click.echo(f"{name}: daily teacher budget {'none' if _budget(usd) is None else f'${_budget(usd):g}'}")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Names, budgets and today's teacher spend as JSON.")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """The names of the keys (the keys themselves are not stored), with their budgets and today's spend."""
    from .paths import payer_spend_dir
    from .server.api_keys import read_key_records
    from .teacher.limits import PayerLedgers, SpendLedger

    rows = []
    for record in sorted(read_key_records(_keys_file(ctx)).values(), key=lambda r: r.name):
        spent = None
        ledger_file = PayerLedgers.ledger_file(payer_spend_dir(), record.name)
        if record.daily_usd is not None and ledger_file.is_file():
            ledger = SpendLedger(ledger_file, record.daily_usd)
            try:
                spent = ledger.spent_today()
            finally:
                ledger.close()
        rows.append({"name": record.name, "daily_budget_usd": record.daily_usd, "spent_today_usd": spent})
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        if row["daily_budget_usd"] is None:
            click.echo(row["name"])
        else:
            click.echo(f"{row['name']}\tdaily budget ${row['daily_budget_usd']:g}, "
                       f"spent today ${row['spent_today_usd'] or 0.0:.4f}")


@keys.command("remove")
@click.argument("name")
@click.pass_context
def keys_remove(ctx: click.Context, name: str) -> None:
    """Revoke NAME's key (at the daemon's next request)."""
    from .server.api_keys import remove_key

    remove_key(_keys_file(ctx), name)
    click.echo(f"removed {name}")


@main.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective configuration (file + environment), validated, as JSON on stdout."""
    from .teacher.keys import redact

    config = _config(ctx)
    data = config.model_dump(mode="json")
    if data["teacher"]["base_url"]:  # a proxy's URL may carry a key (`?key=`, `user:password@`)
        data["teacher"]["base_url"] = redact(data["teacher"]["base_url"])
    # stdout is JSON alone (`athanor config | jq .student`); where it came from goes to stderr.
    click.echo(f"# from {config.source or 'defaults'}", err=True)
    click.echo(json.dumps(data, indent=2))


from .distill.cli import register as _register_distill  # noqa: E402 - harvest, train, evaluate, retrain

_register_distill(main)
from .routing.cli import router as _router_group  # noqa: E402 - router refit

main.add_command(_router_group)
from .distill.dataset_cli import dataset as _dataset_group  # noqa: E402 - dataset export

main.add_command(_dataset_group)
from export.cli import export_command  # noqa: E402 - merge, convert, quantize, verify, publish

main.add_command(export_command)


if __name__ == "__main__":
    main()
