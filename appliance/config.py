"""One typed config: a TOML file, then `ATHANOR_SECTION__KEY` environment overrides, validated once.

    [server]
    socket = "/run/athanor/athanor.sock"
    [student]
    path = "/var/lib/athanor/exports/student.gguf"

`load_config()` returns an `AthanorConfig` or raises `ConfigError` naming the setting and the fix.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import paths
from .defaults import DEFAULT_STUDENT_NAME
from .errors import ConfigError

ENV_PREFIX = "ATHANOR_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(_Section):
    socket: Path = Field(default_factory=paths.default_socket)
    """Unix socket the daemon listens on."""
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    """File mode of the socket; group members may connect."""
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """Largest request body accepted; larger ones get 413."""
    max_queue: int = Field(default=64, ge=1)
    """Requests waiting for the student beyond this get 503 with Retry-After."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """A client must send its request head within this (slowloris guard)."""
    idle_timeout_s: float = Field(default=60.0, gt=0)
    """Keep-alive connections idle longer than this are closed, as are clients that read nothing of
    their answer for this long."""
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    """A streamed answer silent this long (held while the router decides, or the teacher thinks) gets an
    SSE comment, so that proxies and clients with read timeouts do not drop it."""
    max_connections: int = Field(default=256, ge=1)
    """Connections open at once; one more gets 503 with Retry-After at once, unread. Lowered at start
    (with a warning) if the open-file limit (LimitNOFILE=) cannot hold this many."""
    max_connections_per_user: int = Field(default=128, ge=1)
    """Connections one uid may hold open at once: a flood from one local user leaves room for the rest."""
    listen: str | None = Field(default=None, pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$")
    """Also listen on TCP, `HOST:PORT` (e.g. `0.0.0.0:8080`, `[::]:8080`): off when empty. Every request there
    needs an API key (`athanor keys add NAME`); TLS belongs to a reverse proxy in front (README: Caddy)."""
    api_keys_file: Path | None = None
    """Hashed API keys for the TCP listener; empty: `api-keys` next to the config file in use."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins whose browser pages may call the TCP listener (e.g. `http://nas.local:3000`, or `*`)."""

    def tcp_address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class StudentConfig(_Section):
    path: Path | None = None
    """The student: a GGUF file, an `athanor export` folder or its manifest.json (checksums are
    verified before loading), or an ONNX model folder; empty means the embedded SmolLM2-135M-Instruct."""
    quant: str | None = None
    """Which artifact of an export to serve (e.g. q4_k_m, q8_0, f16, or onnx:int8); empty picks the
    smallest published GGUF. With the embedded default (no path), shipped as Q4_1: f16, q8_0, q4_1
    or q4_0, converted once under the state folder (~1 s); empty means f16 when `parallel` > 1 and
    q8_0 when it is 1. On 2 x86 cores a decode step of 1 / 2 / 8 sequences took 5.9 / 14.0 / 23.1 ms
    in Q8_0 and 8.0 / 10.7 / 19.6 ms in F16: Q8_0 is the faster single stream, F16 the faster batch
    (llama.cpp's batched Q8_0 and Q4_1 kernels gain little from sharing weight reads there).
    F16 runs the shipped weights as they are; next-token distributions of the others against it
    (mean KL, top-1 agreement): Q4_1 0.003 / 97%, Q8_0 0.004 / 96%, Q4_0 0.34 / 71% (the fastest,
    but re-rounding to 4 bits changes answers)."""
    name: str = Field(default=DEFAULT_STUDENT_NAME, min_length=1)
    """Model id clients pass as `model`; unset with a `path`, the file's or folder's name."""
    n_ctx: int = Field(default=2048, ge=64, le=1 << 20)
    """Context length in tokens (prompt + answer)."""
    n_batch: int = Field(default=512, ge=1)
    """Tokens decoded per llama.cpp call (all sequences' together)."""
    parallel: int = Field(default=8, ge=1, le=64)
    """Requests decoded together (continuous batching). Each holds its own KV cache of n_ctx
    tokens, allocated at start (the README gives the embedded student's figure)."""
    prompts_first: bool = True
    """A newcomer's first token before the next tokens of the answers in progress: a prompt that
    arrives during a step of generated tokens cuts it short (its work is redone afterwards), and a
    step with new prompts feeds them alone; neither twice in a row (its measured effect on time to
    first token is in the README, from scripts/bench_serve.py)."""
    n_threads: int = Field(default=0, ge=0)
    """CPU threads for decoding; 0 means one per core. On a machine busy with other work, one per core
    but one: llama.cpp's threads meet at a spinning barrier after each operation, and a thread that
    loses its core to another process stalls all of them."""
    n_gpu_layers: int = Field(default=-1, ge=-1)
    """Layers offloaded when llama.cpp is built with CUDA; -1 means all. Ignored on CPU builds."""
    flash_attn: Literal["auto", "on", "off"] = "auto"
    """llama.cpp's flash attention; `auto` lets llama.cpp decide per device."""
    onnx_provider: Literal["auto", "cpu", "cuda"] = "auto"
    """onnxruntime's device for ONNX students: `auto` is CUDA when onnxruntime-gpu offers it, else the
    CPU; `cuda` refuses to start without it rather than serve slowly; `cpu` leaves the GPU to others."""
    default_max_tokens: int = Field(default=512, ge=1)
    """Answer length when a request gives no max_tokens."""

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"no student model at {value}")
        return value

    @model_validator(mode="after")
    def _name_from_path(self) -> "StudentConfig":
        # A student the user brings is not the embedded SmolLM2: unnamed, it is called after its file or
        # folder, so that /v1/models and every answer's `model` never claim another model.
        if "name" not in self.model_fields_set and self.path is not None:
            self.__dict__["name"] = student_name(self.path)
        return self


def student_name(path: Path) -> str:
    """The id of the student at `path`: an export folder's name (also for its manifest.json), a GGUF's stem."""
    if path.name == "manifest.json":
        path = path.parent
    name = (path.stem if path.suffix == ".gguf" else path.name).strip()
    return name or DEFAULT_STUDENT_NAME


class CacheConfig(_Section):
    enabled: bool = True
    """Answer repeated questions from the semantic cache."""
    path: Path | None = None
    """SQLite file of the cache; default `<state>/cache.sqlite3`."""
    embedder: Path | None = None
    """A sentence-transformers model folder; empty means the embedded multilingual encoder (USE v3)."""
    threshold: float = Field(default=0.65, gt=0.0, le=1.0)
    """Cosine similarity a neighbour needs before it is verified (chosen by scripts/bench_cache.py)."""
    verify: bool = True
    """Also require numbers, negation, tense, roles and the differing words to agree."""
    free_zipf: float = Field(default=5.0, ge=0.0)
    """Words at least this common (wordfreq Zipf scale) may be added or dropped between two questions."""
    span_similarity: float = Field(default=0.90, gt=0.0, le=1.0)
    """Cosine the embedder must give two differing spans for them to count as the same thing."""
    ann_min_entries: int = Field(default=100_000, ge=1_000)
    """A namespace with this many entries is searched with an approximate (IVF) index, not exactly."""
    ann_nprobe: int = Field(default=32, ge=1)
    """IVF lists searched per lookup: more is slower and closer to exact."""
    ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """Entries older than this are not served and are purged."""
    max_entries: int = Field(default=100_000, ge=1)
    """Capacity; the least recently used entries are evicted beyond it."""


class RoutingConfig(_Section):
    confidence_threshold: float = Field(default=0.2, ge=0.0, le=1.0)
    """With `router = "off"`: answers whose token-probability quantile is below this go to the teacher
    (when one is configured); `athanor evaluate` recommends a value for a trained student."""
    confidence_quantile: float = Field(default=0.1, gt=0.0, lt=1.0)
    """Confidence is this low quantile of the answer's token probabilities."""
    router: str = "default"
    """"default": the shipped router fitted on the embedded student (scripts/bench_route.py); "off": keep
    answers whose confidence reaches confidence_threshold; or a router file `athanor evaluate` wrote."""

    mode: Literal["single", "ensemble"] = "single"
    """"ensemble": each question is also asked under the role prompts of `appliance/routing/ensemble.py`, all
    decoded in one batch; the answer most drafts agree on is served, and when they disagree (by the
    ensemble router) the teacher gets the drafts and writes the answer. Costs one decode slot per role."""

    hold_tokens: int = Field(default=8, ge=1, le=256)
    """With a teacher, a streamed answer is held for this many tokens; then the early router either
    escalates to the teacher at once or lets the student's answer stream live."""
    explore_share: float = Field(default=0.1, ge=0.0, le=1.0)
    """With a teacher, when the router keeps none of the student's answers (its threshold is 1.0, as the
    shipped one's is for the embedded student), questions go to the teacher before any decode, except this
    share (picked by a hash of the question), which the student still answers in full first: the teacher's
    verdicts on those are what `athanor router refit` learns from, so that a better student is noticed."""

    @field_validator("router")
    @classmethod
    def _router(cls, value: str) -> str:
        if value not in ("default", "off") and not Path(value).is_file():
            raise ValueError(f"no router file at {value}; use \"default\", \"off\" or a file bench_route.py wrote")
        return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def looks_like_a_key(value: str) -> bool:
    """True for what is more likely an API key than a variable's name: Google's `AIza...`, OpenAI's `sk-...`,
    or a long name that is not all capitals (names are conventionally GEMINI_API_KEY; keys are mixed case)."""
    return value.startswith(("AIza", "sk-")) or (len(value) >= 32 and not value.isupper())


class TeacherConfig(_Section):
    provider: Literal["none", "gemini", "openai"] = "none"
    """Which teacher answers when the student is unsure; `none` serves the student alone."""
    model: str = "gemini-2.5-flash"
    """The teacher's model name at its provider."""
    base_url: str | None = None
    """Endpoint override (an OpenAI-compatible server's URL, or a Gemini proxy)."""
    api_key_env: str = "GEMINI_API_KEY"
    """Name of the environment variable holding the API key (the name, not the key)."""
    api_key_file: Path | None = None
    """File holding the API key; wins over the credential and api_key_env."""
    api_key_credential: str = Field(default="gemini-api-key", pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the systemd credential (LoadCredential=) holding the key, read from
    $CREDENTIALS_DIRECTORY when systemd runs the daemon; wins over api_key_env."""
    timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    """Retries on 429 / 5xx / timeouts, with exponential backoff and jitter."""
    requests_per_minute: int = Field(default=60, ge=1)
    tokens_per_minute: int = Field(default=1_000_000, ge=1)
    daily_budget_usd: float = Field(default=1.0, ge=0.0)
    """Teacher spend per UTC day; over it the student answers alone (marked degraded)."""
    price_input_per_mtok: float | None = Field(default=None, ge=0.0)
    """USD per million input tokens; empty uses the built-in price table for the model."""
    price_output_per_mtok: float | None = Field(default=None, ge=0.0)
    """USD per million output tokens; empty uses the built-in price table for the model."""

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, value: str) -> str:
        # The key itself put here would be echoed by every "no key in $..." message and `athanor config`.
        if not _ENV_NAME.fullmatch(value) or looks_like_a_key(value):
            raise ValueError("must name an environment variable (such as GEMINI_API_KEY), not hold the key; "
                             "put the key in that variable or in [teacher].api_key_file")
        return value


class DistillConfig(_Section):
    """`athanor harvest`, `train`, `evaluate` and `retrain`."""

    concurrency: int = Field(default=4, ge=1, le=256)
    """Teacher requests in flight at once while harvesting (the rate limit and budget still apply)."""
    max_tokens: int = Field(default=1024, ge=1)
    """Longest teacher answer asked for while harvesting; an answer cut at this length is dropped."""
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    """Teacher temperature while harvesting."""
    language: str = Field(default="auto", min_length=2)
    """Language answers must be in: `auto` (the prompt's), `any` (no check), or a code such as `en`."""
    dedup_threshold: float = Field(default=0.65, gt=0.0, le=1.0)
    """Prompts at least this cosine-similar to a kept one, and that the cache would serve for it, are dropped
    as near-duplicates."""
    heldout_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Share of each category kept out of training for `athanor evaluate`."""
    seed: int = 0
    """Seed of the split, the data order and LoRA's initialisation."""
    judge_model: str | None = None
    """A second teacher model (same provider) that vets harvested answers and grades open answers."""
    base: Path | None = None
    """Base model trained by `athanor retrain`: a Hugging Face folder or a GGUF file; empty means the embedded SmolLM2-135M."""
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Layers LoRA adapts (attention and MLP projections); `ATHANOR_DISTILL__TARGET_MODULES=q_proj,v_proj`."""
    learning_rate: float = Field(default=2e-4, gt=0.0)
    epochs: int = Field(default=3, ge=1)
    """Most passes over the data; validation loss usually stops training sooner."""
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Share of the training records held back for validation loss (early stopping, and the adapter kept
    is the one with the lowest); 0 turns it off. Datasets under 40 records train on everything."""
    patience: int = Field(default=8, ge=0)
    """Validations (four an epoch) without a new lowest loss before training stops; 0: never early. Two
    epochs by default: a student often plateaus once it has the answer's form, before it learns the content."""
    balance_max: int = Field(default=4, ge=1)
    """Label categories train balanced: rarer labels repeated, each record at most this many times (1: off)."""
    lora_layers: int | None = Field(default=None, ge=1)
    """Adapters on the top this many decoder layers only (empty: all); a CPU trains faster that way."""
    batch_size: int = Field(default=8, ge=1)
    max_seq_len: int = Field(default=512, ge=16)
    """Examples longer than this (prompt + answer, in tokens) are cut."""
    checkpoint_every: int = Field(default=50, ge=1)
    """Optimizer steps between checkpoints (training resumes from the last one)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Training precision: `auto` is bf16 on a GPU that has it, fp16 on an older GPU and fp32 on a CPU (where
    bf16 halves the weights' memory but runs slower); LoRA weights stay fp32 either way."""
    grad_accum: int = Field(default=1, ge=1)
    """Micro-batches of `batch_size` per optimizer step: a larger effective batch in the memory of a small one."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass: far less memory for about a third more time."""
    quantize_base: Literal["none", "4bit"] = "none"
    """`4bit`: QLoRA, the frozen base in NF4 (a 1B+ student on a small GPU); needs CUDA and `pip install bitsandbytes`."""
    kd_temperature: float = Field(default=2.0, gt=0.0)
    """Softmax temperature of white-box distillation from a local teacher's logits."""
    kd_alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    """Weight of the distillation loss; the rest is cross-entropy on the teacher's answer."""
    heldout: Path | None = None
    """Held-out JSONL that `athanor retrain` gates a new student on (from `athanor harvest`)."""
    train_dataset: Path | None = None
    """Training JSONL that `athanor retrain` adds to the distillation log's examples."""
    target_quality: float = Field(default=0.95, gt=0.0, le=1.0)
    """Quality `athanor evaluate` must keep when it recommends a routing threshold."""
    retention_floor: float = Field(default=0.9, gt=0.0, le=1.0)
    """A student whose retention on the held-out set is under this has regressed: `retrain --when-due` and
    `--if-regressed` retrain it."""
    retrain_after: int = Field(default=200, ge=1)
    """`athanor retrain --when-due` (the weekly timer) retrains once this many new teacher-labelled records
    have reached the distillation log since the last student was installed."""
    recent_share: float = Field(default=0.1, ge=0.0, lt=0.5)
    """`retrain` keeps this share of the newest logged questions out of training and measures both students on
    them per category (drift beside the fixed held-out set); 0 turns it off."""
    recent_max: int = Field(default=100, ge=1)
    """At most this many recent questions are kept out (each is two evaluations at the gate)."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # Environment overrides arrive as one string.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class AthanorConfig(_Section):
    """The whole configuration, passed down from the CLI to every part."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    students: list[StudentConfig] = Field(default_factory=list)
    """More students served beside [student] (`[[students]]` tables, each with its own name and
    path, e.g. one per role); a request picks one with `model`. [student] stays the default."""
    source: Path | None = Field(default=None, exclude=True)
    """The file this was read from, if any."""


_FIXES = {
    ("student", "path"): "run `athanor export` or set [student].path (ATHANOR_STUDENT__PATH) to a GGUF file",
}
# Settings whose wrong value may be a secret: their errors never repeat the value.
_UNECHOED = {("teacher", "api_key_env")}


def _unique_student_names(config: "AthanorConfig") -> None:
    seen = {config.student.name}
    for index, extra in enumerate(config.students):
        if extra.name in seen:
            raise ConfigError(f"[[students]][{index}].name", f"{extra.name!r} is already taken",
                              "give every student its own name")
        seen.add(extra.name)


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay `ATHANOR_SECTION__KEY=value` variables on the file's data (pure)."""
    merged = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if not section or not key:
            continue
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"[{section}]", "must be a table")
        # Values stay strings: pydantic coerces numbers, paths and booleans when it validates.
        target[key] = raw
    return merged


def _describe(error: Mapping[str, Any]) -> ConfigError:
    location = tuple(str(part) for part in error.get("loc", ()))
    if len(location) >= 2:
        setting = f"[{location[0]}].{'.'.join(location[1:])}"
    elif location:
        setting = f"[{location[0]}]"
    else:
        setting = "config"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown setting"
        fix = "remove it or check its spelling against README's config reference"
    else:
        value = error.get("input")
        if isinstance(value, (str, int, float)) and not message.startswith("no ") and location[:2] not in _UNECHOED:
            message = f"{message} (got {value!r})"
        fix = _FIXES.get(location[:2], "")
    return ConfigError(setting, message, fix)


def api_keys_path(config: AthanorConfig) -> Path:
    """The API key file: `[server].api_keys_file`, else `api-keys` beside the config file in use (or where the
    first config file would be looked for)."""
    if config.server.api_keys_file is not None:
        return config.server.api_keys_file
    folder = config.source.parent if config.source is not None else paths.config_file_candidates()[0].parent
    return folder / "api-keys"


def parse_config(data: dict[str, Any], source: Path | None = None) -> AthanorConfig:
    """Validate already-merged data; raise `ConfigError` for the first problem found."""
    try:
        config = AthanorConfig.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc.errors()[0]) from None
    _unique_student_names(config)
    config.source = source
    return config


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("ATHANOR_CONFIG", f"no config file at {path}", "create it or unset ATHANOR_CONFIG") from None
    except PermissionError:
        raise ConfigError("config file", f"cannot read {path} (permission denied)", "fix its owner or mode") from None
    except IsADirectoryError:
        raise ConfigError("config file", f"{path} is a folder, not a file", "remove it or point ATHANOR_CONFIG at "
                          "the TOML file") from None
    except OSError as exc:
        raise ConfigError("config file", f"cannot read {path}: {exc.strerror or exc}", "check the disk and the "
                          "file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("config file", f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})",
                          "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config file", f"{path} is not valid TOML: {exc}", "fix the syntax") from None


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AthanorConfig:
    """Read the config file (explicit, `ATHANOR_CONFIG`, or the first default that exists) plus env overrides."""
    environ = os.environ if environ is None else environ
    source: Path | None = path
    if source is None and environ.get("ATHANOR_CONFIG"):
        source = Path(environ["ATHANOR_CONFIG"])  # named explicitly: it must exist
    if source is None:
        # One that exists but is no file (a folder, a broken link) is an error, not a silent skip to defaults.
        source = next((c for c in paths.config_file_candidates() if c.exists() or c.is_symlink()), None)
    data = read_toml(source) if source is not None else {}
    return parse_config(apply_env(data, environ), source)
