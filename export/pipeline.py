"""`athanor export`, step by step: merged -> converted -> quantized -> verified -> published.

Every artifact is built in a work folder, measured against the merged model on held-out prompts
and judged by the gate; only those that pass move into the export folder and are listed in
`manifest.json` (written last, atomically). Rejected builds are deleted; their figures stay in
the manifest under `rejected`.

The pipeline draws nothing: it reports each step and each artifact's state (planned -> built ->
verified -> published or rejected) through `export.events.ExportEvents`; `export.console` draws them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance.protocol import manifest as mf
from .errors import ExportError
from .events import ArtifactState, ExportEvents, Format, Stage, Step
from .merge import BaseRef, check_adapter, read_training_info, resolve_base
from .onnx_export import check_onnx_types
from appliance.engine.quantize import check_gguf_types
from .verify import Gate

# Held out from any training set: short, generic, and each answerable in a few tokens.
DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three primary colours.",
    "Explain in one sentence what a CPU does.",
)
WORK = ".work"


@dataclass
class ExportOptions:
    """One export run, as the CLI (or a test) asks for it."""

    adapter: Path
    out: Path
    base: Path | None = None
    gguf: list[str] = field(default_factory=lambda: ["q8_0", "q4_k_m"])
    onnx: list[str] = field(default_factory=list)
    name: str | None = None
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = 24
    gate: Gate = field(default_factory=Gate)
    dataset: Path | None = None
    threads: int = 0
    keep_work: bool = False


@dataclass(frozen=True)
class Plan:
    """What a run will do, resolved and validated before any heavy work starts."""

    base: BaseRef
    adapter: Path
    out: Path
    name: str
    gguf: list[str]
    onnx: list[str]
    dataset_sha256: str | None

    def progress_total(self) -> int:
        """Steps the progress bar counts: merge, reference, manifest, and each build and verification."""
        gguf = (1 + sum(q != "f16" for q in self.gguf) + len(self.gguf)) if self.gguf else 0
        onnx = (1 + ("fp16" in self.onnx) + ("int8" in self.onnx) + len(self.onnx)) if self.onnx else 0
        return 3 + gguf + onnx

    def steps(self) -> list[str]:
        lines = [f"merge {self.adapter} into {self.base.path} (float32)"]
        if self.gguf:
            how = "copying the base GGUF's tokenizer" if self.base.is_gguf else "llama.cpp's converter"
            lines.append(f"write f16 GGUF ({how})")
            lines += [f"quantize GGUF to {q} (llama_model_quantize)" for q in self.gguf if q != "f16"]
        if self.onnx:
            lines.append("export ONNX fp32 with past key values (optimum)")
            lines += ["convert ONNX to fp16 (onnxruntime's float16 converter)" for q in self.onnx if q == "fp16"]
            lines += ["quantize ONNX to int8 (onnxruntime dynamic)" for q in self.onnx if q == "int8"]
        built = [f"gguf:{q}" for q in self.gguf] + [f"onnx:{q}" for q in self.onnx]
        lines.append(f"verify {', '.join(built)} against the merged model; gate; publish")
        lines.append(f"write {self.out / mf.MANIFEST_NAME}")
        return lines


def make_plan(options: ExportOptions) -> Plan:
    """Validate the options (paths, types, base) without loading anything heavy."""
    check_adapter(options.adapter)
    info = read_training_info(options.adapter)
    base_path = options.base or (Path(info.base_model) if info.base_model else None)
    if base_path is None:
        raise ExportError(f"no base model given and {options.adapter}/training.json names none; pass --base")
    gguf = check_gguf_types(options.gguf)
    onnx = check_onnx_types(options.onnx)
    if not gguf and not onnx:
        raise ExportError("nothing to build; pass --gguf and/or --onnx types")
    dataset = info.dataset_sha256
    if options.dataset is not None:
        if not options.dataset.is_file():
            raise ExportError(f"no dataset at {options.dataset}; pass the JSONL that trained the adapter")
        dataset = mf.sha256_file(options.dataset)
    if not options.prompts:
        raise ExportError("verification needs at least one prompt; pass --prompts FILE or use the defaults")
    name = options.name or options.adapter.resolve().name
    return Plan(resolve_base(base_path), options.adapter, options.out, name, gguf, onnx, dataset)


def read_prompts(path: Path) -> list[str]:
    """Held-out prompts: one per line, or JSONL with a `prompt` field (or `messages`, last user turn)."""
    if not path.is_file():
        raise ExportError(f"no prompts file at {path}")
    prompts = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            record = json.loads(line)
            if "prompt" in record:
                prompts.append(str(record["prompt"]))
            elif record.get("messages"):
                users = [m["content"] for m in record["messages"] if m.get("role") == "user"]
                if users:
                    prompts.append(users[-1])
        else:
            prompts.append(line)
    return prompts


def _prompt_tokens(tokenizer, prompts: list[str]) -> tuple[list[str], list[list[int]]]:
    texts = []
    for prompt in prompts:
        if tokenizer.chat_template:
            texts.append(tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                       add_generation_prompt=True, tokenize=False))
        else:
            texts.append(prompt)
    # The chat template writes any BOS itself; llama.cpp is asked the same way (no extra specials).
    return texts, [tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"] for text in texts]


def _stop_tokens(model, tokenizer) -> set[int]:
    from appliance.distill.models import end_of_generation

    # llama.cpp's end-of-generation set (a GGUF base's own), so the reference stops where the daemon does.
    stop = set(end_of_generation(tokenizer))
    for source in (model.config, getattr(model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        stop.update(value if isinstance(value, list) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        stop.add(tokenizer.eos_token_id)
    return stop


class _Report:
    """The run's side of `ExportEvents`: times the steps and keeps each artifact's latest state."""

    def __init__(self, events: ExportEvents) -> None:
        self.events = events
        self.started = time.monotonic()
        self.states: dict[str, ArtifactState] = {}

    def begin(self, what: str) -> None:
        self.started = time.monotonic()
        self.events.on_step(Step("begin", what))

    def done(self, what: str, artifact: ArtifactState | None = None) -> None:
        self.events.on_step(Step("done", what, time.monotonic() - self.started, artifact))

    def plan(self, fmt: Format, quants: list[str]) -> None:
        for quant in quants:
            self._report(ArtifactState(fmt, quant))

    def advance(self, fmt: Format, quant: str, stage: Stage, **changes: Any) -> ArtifactState:
        return self._report(self.states[f"{fmt}:{quant}"].advance(stage, **changes))

    def _report(self, state: ArtifactState) -> ArtifactState:
        self.states[state.label] = state
        self.events.on_artifact(state)
        return state


def run_export(options: ExportOptions, events: ExportEvents | None = None) -> mf.Manifest:
    """Build, verify, gate and publish every requested artifact; returns the manifest written.

    Progress goes to `events` (nothing is drawn or printed here); by default it goes nowhere.
    """
    import torch

    from appliance.distill.models import load_model, load_tokenizer

    from .merge import merge_adapter, save_merged
    from .runners import TorchRunner, reference

    events = events or ExportEvents()
    plan = make_plan(options)
    if options.threads:
        torch.set_num_threads(options.threads)
    out = plan.out
    work = out / WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    progress = _Report(events)
    events.on_start(plan)
    try:
        progress.plan("gguf", plan.gguf)
        progress.plan("onnx", plan.onnx)
        progress.begin("merging the adapter")
        model = merge_adapter(load_model(plan.base.path), plan.adapter)
        tokenizer = load_tokenizer(plan.base.path, need_chat_template=False)
        merged_dir = save_merged(model, tokenizer, work / "merged")
        progress.done(f"merged {plan.adapter.name} into {plan.base.path.name}")

        progress.begin(f"running the merged model on {len(options.prompts)} prompts")
        texts, prompt_ids = _prompt_tokens(tokenizer, options.prompts)
        stop = _stop_tokens(model, tokenizer)
        ref = reference(TorchRunner(model), prompt_ids, options.max_new_tokens, stop)
        progress.done(f"reference answers from the merged model ({ref.tokens_per_s:.0f} tok/s)")
        n_ctx = max(len(p) for p in prompt_ids) + options.max_new_tokens + 8

        manifest = mf.Manifest(
            base=str(plan.base.path), adapter=str(plan.adapter), dataset_sha256=plan.dataset_sha256,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), student_name=plan.name,
            merged_reference={"tokens_per_s": round(ref.tokens_per_s, 1), "max_new_tokens": options.max_new_tokens},
            prompts=list(options.prompts),
        )
        builder = _Builder(plan, options, work, progress, ref, stop, texts, n_ctx, merged_dir, model, manifest)
        if plan.gguf:
            builder.gguf()
        if plan.onnx:
            builder.onnx()
        del model
        mf.write_manifest(manifest, out)
        progress.done(f"wrote {out / mf.MANIFEST_NAME}: {len(manifest.artifacts)} published, "
                      f"{len(manifest.rejected)} rejected")
    except BaseException as exc:
        events.on_end(exc)
        raise
    events.on_end(None)
    if not options.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


class _Builder:
    """Builds each artifact in the work folder, verifies it, and publishes or rejects it."""

    def __init__(self, plan: Plan, options: ExportOptions, work: Path, progress: _Report, ref, stop: set[int],
                 texts: list[str], n_ctx: int, merged_dir: Path, model, manifest: mf.Manifest) -> None:
        self.plan, self.options, self.work, self.progress = plan, options, work, progress
        self.ref, self.stop, self.texts, self.n_ctx = ref, stop, texts, n_ctx
        self.merged_dir, self.model, self.manifest = merged_dir, model, manifest

    def gguf(self) -> None:
        from appliance.engine.quantize import quantize

        plan = self.plan
        f16 = self.work / f"{plan.name}.f16.gguf"
        self.progress.begin("writing the f16 GGUF")
        if plan.base.is_gguf:
            from .gguf_writer import write_gguf

            write_gguf(self.model, f16, plan.base.path)
        else:
            from .convert import convert_hf_folder

            convert_hf_folder(self.merged_dir, f16)
        self.progress.done(f"f16 GGUF ({f16.stat().st_size / 1e6:.1f} MB)")
        if "f16" in plan.gguf:
            self.progress.advance("gguf", "f16", "built", path=f16, size_bytes=f16.stat().st_size)
        built = {"f16": f16}
        for quant in plan.gguf:  # all from f16 before any is verified: publishing moves f16 away
            if quant != "f16":
                self.progress.begin(f"quantizing to {quant}")
                built[quant] = self.work / f"{plan.name}.{quant}.gguf"
                with _quiet_stderr():
                    quantize(f16, built[quant], quant, self.options.threads)
                self.progress.done(f"{quant} GGUF ({built[quant].stat().st_size / 1e6:.1f} MB)")
                self.progress.advance("gguf", quant, "built", path=built[quant], size_bytes=built[quant].stat().st_size)
        for quant in plan.gguf:
            self._verify_gguf(quant, built[quant])

    def _verify_gguf(self, quant: str, built: Path) -> None:
        from .runners import LlamaCppRunner, measure

        self.progress.begin(f"verifying gguf:{quant}")
        runner = LlamaCppRunner(built, n_ctx=self.n_ctx, threads=self.options.threads)
        try:
            figures = measure(runner, self.ref, self.stop)
            matches = sum(runner.tokenize(t) == p for t, p in zip(self.texts, self.ref.prompts))
        finally:
            runner.close()
        extra = {"tokenizer_match": round(matches / len(self.texts), 4)}
        reasons = []
        if matches < len(self.texts):
            reasons.append(f"llama.cpp tokenizes {len(self.texts) - matches} prompt(s) differently from the merged model")
        target = self.plan.out / "gguf" / built.name
        self._judge("gguf", quant, [built], built, target, figures, extra, reasons)

    def onnx(self) -> None:
        from .onnx_export import convert_fp16, export_fp32, quantize_int8

        fp32 = self.work / "onnx-fp32"
        self.progress.begin("exporting ONNX fp32")
        with _quiet_stderr():
            export_fp32(self.merged_dir, fp32)
        self.progress.done("ONNX fp32")
        built = {"fp32": fp32}
        if "fp32" in self.plan.onnx:
            self._built_onnx("fp32", fp32)
        if "fp16" in self.plan.onnx:  # before fp32 is verified: publishing moves fp32 away
            self.progress.begin("converting ONNX to fp16")
            built["fp16"] = convert_fp16(fp32, self.work / "onnx-fp16")
            self.progress.done("ONNX fp16")
            self._built_onnx("fp16", built["fp16"])
        if "int8" in self.plan.onnx:
            self.progress.begin("quantizing ONNX to int8")
            built["int8"] = quantize_int8(fp32, self.work / "onnx-int8")
            self.progress.done("ONNX int8")
            self._built_onnx("int8", built["int8"])
        for quant in self.plan.onnx:
            self._verify_onnx(quant, built[quant])

    def _built_onnx(self, quant: str, built: Path) -> None:
        from .onnx_export import artifact_files

        size = sum(p.stat().st_size for p in artifact_files(built))
        self.progress.advance("onnx", quant, "built", path=built, size_bytes=size)

    def _verify_onnx(self, quant: str, built: Path) -> None:
        from .onnx_export import artifact_files
        from .runners import OnnxRunner, measure

        self.progress.begin(f"verifying onnx:{quant}")
        figures = measure(OnnxRunner(built, threads=self.options.threads), self.ref, self.stop)
        target = self.plan.out / "onnx" / quant
        self._judge("onnx", quant, artifact_files(built), built, target, figures, {}, [])

    def _judge(self, fmt: Format, quant: str, files: list[Path], built: Path, target: Path, figures,
               extra: dict, reasons: list[str]) -> None:
        reasons = reasons + self.options.gate.judge(quant, figures)
        verification = {**figures.as_dict(), **extra,
                        "gate": {"min_agreement": self.options.gate.threshold(quant).min_agreement,
                                 "max_kl": self.options.gate.threshold(quant).max_kl}}
        size = sum(p.stat().st_size for p in files)
        label = f"{fmt}:{quant}"
        self.progress.advance(fmt, quant, "verified", figures=verification)
        if reasons:
            self.manifest.rejected.append(mf.Artifact(fmt, quant, str(target.relative_to(self.plan.out)), "", size,
                                                      verification=verification, reasons=tuple(reasons)))
            _remove(target)  # an older build of the same name must not look published either
            state = self.progress.advance(fmt, quant, "rejected", path=target, reasons=tuple(reasons))
            self.progress.done(f"rejected {label}: {'; '.join(reasons)}", state)
            return
        _remove(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), str(target))
        root = self.plan.out
        if fmt == "gguf":
            entries = mf.file_entries(root, [target])
            main = entries[0]
        else:
            entries = mf.file_entries(root, [target / p.name for p in files])
            main = next(e for e in entries if e.path.endswith("/" + "model.onnx"))
        self.manifest.artifacts.append(mf.Artifact(fmt, quant, str(target.relative_to(root)), main.sha256, size,
                                                   files=entries, verification=verification))
        state = self.progress.advance(fmt, quant, "published", path=target, size_bytes=size)
        self.progress.done(f"published {label}: agreement {figures.agreement:.3f}, KL {figures.kl_mean:.4f}, "
                           f"{size / 1e6:.1f} MB, {figures.tokens_per_s:.0f} tok/s", state)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class _quiet_stderr:
    """Send C libraries' chatter (llama.cpp's quantizer, the ONNX exporter) to a file, not the terminal."""

    def __enter__(self):
        import os
        import sys
        import tempfile

        sys.stderr.flush()
        self._saved = os.dup(2)
        self._log = tempfile.TemporaryFile()
        os.dup2(self._log.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import os

        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._log.close()
