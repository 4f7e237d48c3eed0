"""`athanor train`: LoRA fine-tuning (peft) of a base model on a harvested dataset.

Chats are formatted with the base model's own chat template (the one llama.cpp serves with),
and the loss falls on the assistant's tokens only. Optionally the loss mixes in white-box
distillation from a local teacher's logits. The output folder is a peft adapter
(`save_pretrained`) plus `training.json`, `loss.png` and `checkpoints/`.

On a CPU every computed position costs: batches group examples of similar length (each padded
to its own longest), an over-long prompt loses its middle, and logits are computed only where an
answer token is predicted (`scripts/bench_train.py` measures the difference).

For a real-sized student on a GPU: bf16/fp16 mixed precision (the frozen base in half precision, the
LoRA weights and optimizer state in fp32, the forward pass under autocast), gradient accumulation,
gradient checkpointing and QLoRA (a 4-bit NF4 base; needs CUDA and bitsandbytes). All but QLoRA run on
a CPU too, so the tests exercise them (`scripts/bench_train.py --memory` measures their memory).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from ..config import DistillConfig
from . import DistillError
from . import checkpoints
from .models import device as pick_device
from .models import DTYPES, end_of_turn, load_model, load_tokenizer
from .reasoning import join_reasoning
from .records import Record
from .split import balance_labels, stratified_split
from ..protocol.training import TrainingMeta

IGNORE = -100
LOSS_PNG = "loss.png"
GROUP_BATCHES = 16
"""Batches per length-sorted chunk when batches are grouped by length (see `epoch_batches`)."""

_log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainSettings:
    """LoRA and optimisation settings (defaults from `[distill]`)."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    modules_to_save: tuple[str, ...] = ()
    """Modules trained in full beside the adapters (e.g. `lm_head` for a model that must learn new words)."""
    learning_rate: float = 2e-4
    epochs: int = 3
    batch_size: int = 8
    max_seq_len: int = 512
    checkpoint_every: int = 50
    seed: int = 0
    with_reasoning: bool = False
    """Teach the `<thinking>` part too, when the records have one."""
    kd_temperature: float = 2.0
    kd_alpha: float = 0.5
    max_steps: int | None = None
    """Stop (with a checkpoint) after this many optimizer steps; a later run resumes from there."""
    group_by_length: bool = True
    """Batch examples of similar length together (in shuffled chunks), so little of each batch is padding."""
    lora_layers: int | None = None
    """Adapters on the top this many decoder layers only (None: all). The backward pass then stops at the
    lowest adapted layer, which is most of a CPU step's cost."""
    validation_fraction: float = 0.1
    """Share of each category held back to measure validation loss: the adapter kept is the one with the
    lowest, and training stops when it has not improved for `patience` validations. 0: no validation."""
    eval_every: int = 0
    """Optimizer steps between validations (0: four times an epoch)."""
    patience: int = 8
    """Validations without a new lowest loss before training stops early (0: never stop early)."""
    balance_max: int = 4
    """In a label category (answers from a few short labels), rarer labels are repeated up to this many
    times towards the commonest one's count; 1: train on the labels as harvested."""
    precision: Precision = "auto"
    """`fp32`, `bf16` or `fp16` (the frozen base's weights and the forward pass; LoRA weights and optimizer
    state stay fp32), or `auto` (see `choose_precision`)."""
    grad_accum: int = 1
    """Micro-batches of `batch_size` per optimizer step (effective batch: batch_size × grad_accum). Steps,
    checkpoints, validation and early stopping count optimizer steps."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them."""
    quantize_base: Literal["none", "4bit"] = "none"
    """`4bit`: QLoRA, the frozen base in bitsandbytes NF4 (needs CUDA and bitsandbytes)."""

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum

    @classmethod
    def from_config(cls, cfg: DistillConfig, **overrides: Any) -> "TrainSettings":
        base = cls(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                   target_modules=tuple(cfg.target_modules), learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                   batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len, checkpoint_every=cfg.checkpoint_every,
                   seed=cfg.seed, kd_temperature=cfg.kd_temperature, kd_alpha=cfg.kd_alpha,
                   lora_layers=cfg.lora_layers, validation_fraction=cfg.validation_fraction,
                   patience=cfg.patience, balance_max=cfg.balance_max, precision=cfg.precision,
                   grad_accum=cfg.grad_accum, gradient_checkpointing=cfg.gradient_checkpointing,
                   quantize_base=cfg.quantize_base)
        return cls(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


def choose_precision(requested: str, device: str, bf16_supported: bool) -> str:
    """The precision a run trains in (pure): `auto` is bf16 on a CUDA device that supports it, fp16 on an
    older CUDA device, fp32 on a CPU (whose bf16 matmuls are emulated and slower, though they halve the
    memory). An explicit choice stands where it can run."""
    if requested == "auto":
        return ("bf16" if bf16_supported else "fp16") if device == "cuda" else "fp32"
    if requested == "bf16" and device == "cuda" and not bf16_supported:
        raise DistillError("this GPU has no bfloat16 (it needs compute capability 8.0+); "
                           "set [distill].precision to fp16 or auto (--precision fp16)")
    if requested == "fp16" and device != "cuda":
        raise DistillError("fp16 training needs a CUDA GPU (its loss scaling is for one); on a CPU set "
                           "[distill].precision to bf16 or fp32 (--precision bf16)")
    if requested not in ("fp32", "bf16", "fp16"):
        raise DistillError(f"unknown precision {requested!r}: use auto, fp32, bf16 or fp16")
    return requested


def check_quantize_base(quantize_base: str, device: str, has_bitsandbytes: bool) -> None:
    """Refuse QLoRA where it cannot run (pure), so a run fails before it loads or tokenizes anything."""
    if quantize_base == "none":
        return
    if quantize_base != "4bit":
        raise DistillError(f"unknown quantize_base {quantize_base!r}: use none or 4bit")
    if device != "cuda":
        raise DistillError("quantize_base = \"4bit\" (QLoRA) needs a CUDA GPU and this machine has none; "
                           "set [distill].quantize_base = \"none\" (or leave out --quantize-base 4bit) to train "
                           "the full-precision base")
    if not has_bitsandbytes:
        raise DistillError("quantize_base = \"4bit\" (QLoRA) needs bitsandbytes, which is not installed: "
                           "`.venv/bin/pip install bitsandbytes`, or set [distill].quantize_base = \"none\"")


def preflight(settings: TrainSettings, device: str | None = None) -> str:
    """Check that `settings` can run on this machine before any work; returns the precision to train in."""
    from ..extras import require

    require("train", "training a student")
    import torch

    dev = device or pick_device()
    check_quantize_base(settings.quantize_base, dev, importlib.util.find_spec("bitsandbytes") is not None)
    bf16 = dev != "cuda" or bool(torch.cuda.is_bf16_supported())
    return choose_precision(settings.precision, dev, bf16)


def autocast(device: str, precision: str) -> Any:
    """The forward pass's context: autocast to bf16/fp16, nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, DTYPES[precision]))


def answer_tokens(batch: dict[str, Any]) -> int:
    """How many tokens of a collated batch the loss learns (its mean is over these)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _ids(encoded: Any) -> list[int]:
    # apply_chat_template returns a list, or a BatchEncoding when a template asks for a dict.
    return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)


def chat_tokens(tokenizer: Any, record: Record, with_reasoning: bool = False) -> tuple[list[int], list[int]]:
    """(prompt, answer) token ids of one record in the tokenizer's chat template, untruncated."""
    messages = record.messages()
    target = join_reasoning(record.reasoning, record.answer) if with_reasoning else record.answer
    prompt = _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target}], tokenize=True))
    if full[: len(prompt)] != prompt:
        # Some templates rewrite earlier turns once an answer follows; fall back to prompt + answer + end of
        # turn. The end is the template's own (`<|im_end|>`, `<|eot_id|>`), not the eos, which may be
        # another token (`<|end_of_text|>`) that the served chat never ends a turn with.
        end = end_of_turn(tokenizer)
        full = prompt + tokenizer(target + end, add_special_tokens=False)["input_ids"]
    return prompt, full[len(prompt):]


def fit_example(prompt: Sequence[int], answer: Sequence[int], max_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of at most `max_len` tokens: prompt + answer, labels on the answer only.

    Too long: the answer is kept and the prompt loses its middle; its head (the persona, the
    instruction, the chat template's opening) and its tail (the end of the question and the
    assistant's header, which the answer follows) stay. An answer longer than `max_len` - 1 loses its tail.
    """
    prompt, answer = list(prompt), list(answer)
    overflow = len(prompt) + len(answer) - max_len
    if overflow > 0:
        keep = max(1, len(prompt) - overflow)
        tail = keep - keep // 2
        prompt = prompt[: keep // 2] + prompt[len(prompt) - tail:]
        answer = answer[: max_len - len(prompt)]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def build_example(tokenizer: Any, record: Record, max_len: int = 512,
                  with_reasoning: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one record: the chat in the tokenizer's template, labels on the answer only,
    cut to `max_len` as `fit_example` does."""
    return fit_example(*chat_tokens(tokenizer, record, with_reasoning), max_len)


def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any, temperature: float, alpha: float) -> Any:
    """alpha * KL(teacher || student at temperature T) * T² + (1 - alpha) * cross-entropy, on answer tokens.

    Logits are (batch, seq, vocab) as the models return them: position i predicts token i+1 of `labels`.
    T² keeps the soft loss's gradients on the scale of the hard one's (Hinton et al., 2015).
    """
    return _kd_aligned(student_logits[:, :-1, :], teacher_logits[:, :-1, :], labels[:, 1:], temperature, alpha)


def _kd_aligned(student: Any, teacher: Any, target: Any, temperature: float, alpha: float) -> Any:
    """`kd_loss` on logits already aligned with the tokens they predict (`target`, IGNORE where unlearned)."""
    import torch.nn.functional as F

    mask = target != IGNORE
    if not mask.any():
        return student.sum() * 0.0
    ce = F.cross_entropy(student[mask].float(), target[mask])
    if alpha == 0.0:
        return ce
    log_student = F.log_softmax(student[mask].float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher[mask].float() / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()
    return alpha * kl * temperature**2 + (1 - alpha) * ce


def answer_positions(labels: Any) -> Any:
    """The sequence positions whose logits predict a learned token in some row (1-D, ascending).

    Only these logits enter the loss; the rest of the (batch, seq, vocab) logits, most of a step's
    memory and a good share of its time when the answers are short, need never be computed.
    """
    return (labels[:, 1:] != IGNORE).any(0).nonzero().flatten()


def _keeps_logits(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def batch_loss(model: Any, batch: dict[str, Any], teacher: Any = None, *, temperature: float = 2.0,
               alpha: float = 0.5, vocab: int | None = None, keep_logits: bool = True) -> Any:
    """The training loss of one collated batch: cross-entropy on the answer tokens, mixed with the KD loss
    when a teacher is given. `keep_logits`: compute logits at the answer positions only (same loss)."""
    import torch

    positions = answer_positions(batch["labels"])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if keep_logits:
        inputs["logits_to_keep"] = positions
    logits = model(**inputs).logits
    if not keep_logits:
        logits = logits[:, positions, :]
    target = batch["labels"][:, positions + 1]
    if teacher is None:
        return _kd_aligned(logits, logits, target, temperature, 0.0)
    with torch.no_grad():
        teacher_logits = teacher(**inputs).logits
    if not keep_logits:
        teacher_logits = teacher_logits[:, positions, :]
    width = min(logits.shape[-1], teacher_logits.shape[-1], vocab or logits.shape[-1])
    return _kd_aligned(logits[..., :width], teacher_logits[..., :width], target, temperature, alpha)


def check_same_vocab(student_tokenizer: Any, teacher_tokenizer: Any) -> None:
    """Refuse logit distillation between models whose token ids mean different things."""
    mine, theirs = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if mine == theirs:
        return
    differing = sorted(set(mine.items()) ^ set(theirs.items()), key=lambda kv: kv[1])[:3]
    raise DistillError(
        f"the KD teacher's vocabulary differs from the student's ({len(theirs)} vs {len(mine)} tokens; "
        f"e.g. {', '.join(f'{t!r}={i}' for t, i in differing)}): logits can only be distilled between models "
        "that share a tokenizer; use a teacher of the same family, or train without --kd-teacher"
    )


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (padding ignored by the loss).

    Each batch is padded to its own longest example only; `epoch_batches` groups similar lengths."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (tokens, targets) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, : len(targets)] = torch.tensor(targets)
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True) -> list[list[int]]:
    """One epoch's batches (example indices), fixed by `seed` alone, so a resumed run sees the same batches.

    Ungrouped: consecutive slices of a random permutation. Grouped: the permutation is cut into chunks of
    `GROUP_BATCHES` batches, each chunk is sorted by length (longest first) and sliced into batches, and
    the batches are shuffled; every batch still comes from a random chunk, but holds examples of similar
    length, so padding to its longest costs little. Both give ceil(n / batch_size) batches.
    """
    import numpy as np

    rng = np.random.RandomState(seed)
    order = [int(i) for i in rng.permutation(len(lengths))]
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    chunk = batch_size * GROUP_BATCHES
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def padding_share(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of the computed token positions that are padding, for these batches."""
    computed = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(lengths[i] for batch in batches for i in batch) / computed if computed else 0.0


def present_modules(model: Any, wanted: Sequence[str]) -> list[str]:
    """The wanted LoRA targets this architecture has (names differ between families)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [m for m in wanted if m in names]
    if not found:
        raise DistillError(
            f"none of the LoRA target modules {list(wanted)} exist in this model; "
            f"set [distill].target_modules to some of: {', '.join(sorted(n for n in names if 'proj' in n)[:12])}"
        )
    return found


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    total_steps: int
    final_loss: float | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int = 0
    finished: bool = True
    """False when `max_steps` stopped it early (a checkpoint holds the rest)."""
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    """The step whose adapter was kept (lowest validation loss); None without validation."""
    stopped_early: bool = False
    """True when validation loss stopped improving before the last epoch ended."""


StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class StepInfo:
    """What one optimizer step did, for progress displays (`on_progress`)."""

    step: int
    total: int
    epoch: int
    """1-based."""
    epochs: int
    loss: float
    tokens: int
    """Real (non-padding) tokens in this step's batch."""
    elapsed: float
    """Seconds since this run's first step began (checkpoint saves included)."""
    run_steps: int
    """Steps taken by this run (a resumed run starts counting at 0)."""
    run_tokens: int
    """Real tokens this run has trained on."""

    @property
    def tokens_per_s(self) -> float:
        return self.run_tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at this run's average pace so far."""
        return (self.total - self.step) * self.elapsed / self.run_steps if self.run_steps else None


MIN_VALIDATION = 40
"""Fewer records than this train without validation: a handful of held-back examples gives a loss too
noisy to stop on, and a tiny task needs every example."""


def validation_split(records: Sequence[Record], settings: TrainSettings) -> tuple[list[Record], list[Record]]:
    """(train, validation) records: stratified by category, seeded; no validation below `MIN_VALIDATION`."""
    if settings.validation_fraction <= 0 or len(records) < MIN_VALIDATION:
        return list(records), []
    return stratified_split(records, settings.validation_fraction, seed=settings.seed)


def validation_steps(per_epoch: int, total: int, eval_every: int) -> set[int]:
    """The optimizer steps after which validation loss is measured: every `eval_every` steps (0: four times
    an epoch), and always the last step."""
    every = eval_every or max(1, per_epoch // 4)
    return set(range(every, total + 1, every)) | {total}


def should_stop(state: checkpoints.TrainState, patience: int) -> bool:
    """Early stopping: `patience` validations in a row without a new lowest loss."""
    return patience > 0 and state.evals_since_best() >= patience


def top_layers(model: Any, count: int | None) -> list[int] | None:
    """Indices of the top `count` decoder layers (None: all layers)."""
    if count is None:
        return None
    layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if layers <= 0:
        raise DistillError("this model does not say how many layers it has (config.num_hidden_layers); "
                           "unset [distill].lora_layers to adapt all layers")
    return list(range(max(0, layers - count), layers))


def validation_loss(model: Any, examples: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                    dev: str, keep_logits: bool, precision: str = "fp32") -> float:
    """Mean cross-entropy per answer token over `examples` (the model is left in training mode)."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collate([examples[i] for i in order[start:start + batch_size]], pad_id)
            batch = {k: v.to(dev) for k, v in batch.items()}
            count = answer_tokens(batch)
            with autocast(dev, precision):
                total += float(batch_loss(model, batch, keep_logits=keep_logits)) * count
            tokens += count
    model.train()
    return total / tokens if tokens else float("nan")


_FINGERPRINT_DEFAULTS = {"precision": "fp32", "grad_accum": 1, "quantize_base": "none"}
"""What runs computed before these settings existed: left out of a fingerprint at these values, so their
checkpoints still resume."""


def fingerprint_settings(settings: TrainSettings, precision: str) -> dict[str, Any]:
    """The settings a checkpoint must match to resume: the precision as resolved (`auto` may differ between
    machines); without `max_steps` and `gradient_checkpointing`, which change when a run stops and what it
    keeps in memory, not what it computes (so a run that ran out of memory resumes with checkpointing on)."""
    kept = {k: v for k, v in asdict(settings).items() if k not in ("max_steps", "gradient_checkpointing")}
    kept["precision"] = precision
    return {k: v for k, v in kept.items() if _FINGERPRINT_DEFAULTS.get(k, object()) != v}


def make_trainable(model: Any, settings: TrainSettings) -> Any:
    """`model` (as `load_model` gave it) with LoRA adapters as `settings` ask, gradient checkpointing (or
    QLoRA's preparation of a 4-bit base) where asked, and every trained weight in fp32."""
    from peft import LoraConfig, get_peft_model

    # Non-reentrant: PyTorch's recommended kind, and it passes the layers' keyword arguments through.
    checkpointing = {"use_reentrant": False}
    if settings.quantize_base == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing)
    elif settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        # Frozen embeddings give the first checkpointed layer inputs that need no gradient; a reentrant
        # checkpoint (a peft or transformers default elsewhere) would then drop the adapters' gradients.
        model.enable_input_require_grads()
    if settings.gradient_checkpointing:
        model.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=present_modules(model, settings.target_modules),
                      modules_to_save=list(settings.modules_to_save) or None, task_type="CAUSAL_LM",
                      layers_to_transform=top_layers(model, settings.lora_layers))
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        # Half-precision updates of a small learning rate round away; the trained weights (and so Adam's
        # state) are fp32 whatever the base is (peft does this for the adapters, not modules_to_save).
        parameter.data = parameter.data.float()
    return model


def train(records: Sequence[Record], base: Path, out_dir: Path, settings: TrainSettings, *,
          dataset_sha256: str, kd_teacher: Path | None = None,
          on_step: StepCallback = lambda step, total, loss: None,
          on_progress: Callable[[StepInfo], None] | None = None,
          on_log: Callable[[str], None] = _log.info) -> TrainResult:
    """LoRA-train `base` on `records` into `out_dir`, resuming from `out_dir/checkpoints` when one is there.

    `on_step` gets (step, total, loss) and `on_progress` a `StepInfo` after each step; `on_log` gets a
    few lines about the run (examples, truncation, padding, threads) before the first.
    """
    import torch

    dev = pick_device()
    precision = preflight(settings, dev)
    if not records:
        raise DistillError("the dataset holds no records to train on; check the harvest's report.json")
    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(base)
    train_records, val_records = validation_split(records, settings)
    harvested = len(train_records)
    train_records = balance_labels(train_records, settings.balance_max, settings.seed)
    if len(train_records) > harvested:
        on_log(f"{len(train_records) - harvested} repeats of rarer labels balance the label categories")
    examples, truncated = [], 0
    for record in train_records:
        prompt, answer = chat_tokens(tokenizer, record, settings.with_reasoning)
        truncated += len(prompt) + len(answer) > settings.max_seq_len
        examples.append(fit_example(prompt, answer, settings.max_seq_len))
    examples = [e for e in examples if any(label != IGNORE for label in e[1])]
    if not examples:
        raise DistillError("no record has an answer token left to learn; check the dataset's answers")
    val_examples = [e for e in (build_example(tokenizer, r, settings.max_seq_len, settings.with_reasoning)
                                for r in val_records) if any(label != IGNORE for label in e[1])]
    lengths = [len(ids) for ids, _ in examples]
    teacher = None
    if kd_teacher is not None:
        check_same_vocab(tokenizer, load_tokenizer(kd_teacher))
        teacher = load_model(kd_teacher, dev, dtype=precision).eval()
    quantized = settings.quantize_base == "4bit"
    model = load_model(base, dev, dtype=precision, four_bit=quantized)
    keep_logits = _keeps_logits(model) and (teacher is None or _keeps_logits(teacher))
    model = make_trainable(model, settings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    # fp16's narrow range underflows small gradients unless the loss is scaled up; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(dev, enabled=precision == "fp16")
    effective = settings.effective_batch_size
    per_epoch = math.ceil(len(examples) / effective)
    total = per_epoch * settings.epochs
    warmup = min(20, max(1, total // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    fingerprint = {"dataset_sha256": dataset_sha256, "base": str(Path(base).resolve()),
                   "settings": fingerprint_settings(settings, precision),
                   "kd_teacher": str(kd_teacher) if kd_teacher else None}
    ckpt_root = out_dir / "checkpoints"
    state = checkpoints.TrainState()
    found = checkpoints.latest(ckpt_root)
    if found is not None:
        state = checkpoints.restore(found, model, optimizer, scheduler, fingerprint, scaler)
    else:
        shutil.rmtree(ckpt_root / checkpoints.BEST, ignore_errors=True)  # a best adapter of an earlier run
    resumed = state.step
    validate_at = validation_steps(per_epoch, total, settings.eval_every) if val_examples else set()
    first = epoch_batches(lengths, effective, settings.seed, settings.group_by_length)
    if val_examples:
        on_log(f"{len(val_examples)} records held back for validation loss, measured every "
               f"{min(validate_at)} steps; stopping after {settings.patience or 'no'} validations without a new low")
    on_log(f"{len(examples)} examples ({len(train_records) - len(examples)} without an answer token skipped), "
           f"{sum(lengths)} tokens; {truncated} longer than max_seq_len {settings.max_seq_len} had their "
           "prompt's middle cut")
    micro = f" ({settings.grad_accum} micro-batches of {settings.batch_size})" if settings.grad_accum > 1 else ""
    on_log(f"{total} steps ({settings.epochs} epoch{'s' * (settings.epochs != 1)} of {per_epoch} batches of "
           f"{effective}{micro})"
           f"{f', resuming at step {resumed}' if resumed else ''}; padding {padding_share(lengths, first):.0%} "
           f"of the batches{' (grouped by length)' if settings.group_by_length else ''}; "
           f"{dev}, {torch.get_num_threads()} threads; {precision}"
           f"{', 4-bit base' if quantized else ''}{', gradient checkpointing' if settings.gradient_checkpointing else ''}")
    model.train()
    pad = tokenizer.pad_token_id
    started, run_tokens = time.monotonic(), 0
    for epoch in range(settings.epochs):
        if (epoch + 1) * per_epoch <= state.step:
            continue
        # Batches of the effective size, cut into micro-batches: a step sees the same examples whatever
        # grad_accum is, and a length-sorted batch cuts into micro-batches of similar lengths.
        batches = epoch_batches(lengths, effective, settings.seed + epoch, settings.group_by_length)
        for index, members in enumerate(batches):
            if epoch * per_epoch + index < state.step:
                continue
            micros = [{k: v.to(dev) for k, v in collate([examples[i] for i in part], pad).items()}
                      for part in (members[j:j + settings.batch_size] for j in range(0, len(members), settings.batch_size))]
            counts = [answer_tokens(batch) for batch in micros]
            value = 0.0
            for batch, count in zip(micros, counts):
                with autocast(dev, precision):
                    loss = batch_loss(model, batch, teacher, temperature=settings.kd_temperature,
                                      alpha=settings.kd_alpha, vocab=len(tokenizer), keep_logits=keep_logits)
                # Each micro-batch's mean weighs by its share of the step's answer tokens, so the gradient is
                # that of the mean over the whole batch, as one batch of the effective size would give.
                loss = loss * (count / max(1, sum(counts)))
                scaler.scale(loss).backward()
                value += float(loss.detach())
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.losses.append((state.step, value))
            early = False
            if state.step in validate_at:
                val = validation_loss(model, val_examples, settings.batch_size, pad, dev, keep_logits, precision)
                state.val_losses.append((state.step, val))
                if state.best_val == (state.step, val):
                    checkpoints.save_best(ckpt_root, model)
                early = should_stop(state, settings.patience) and state.step < total
                on_log(f"step {state.step}: validation loss {val:.4f} (lowest {state.best_val[1]:.4f} at step "
                       f"{state.best_val[0]}){'; stopping early' if early else ''}")
            stop = settings.max_steps is not None and state.step >= settings.max_steps
            if stop or early or state.step % settings.checkpoint_every == 0:
                checkpoints.save(ckpt_root, model, optimizer, scheduler, state, fingerprint, scaler)
            tokens = sum(int(batch["attention_mask"].sum()) for batch in micros)
            run_tokens += tokens
            on_step(state.step, total, value)
            if on_progress is not None:
                on_progress(StepInfo(state.step, total, epoch + 1, settings.epochs, value, tokens,
                                     time.monotonic() - started, state.step - resumed, run_tokens))
            if early:
                break
            if stop and state.step < total:
                return TrainResult(out_dir, state.step, total, state.losses[-1][1], state.losses, resumed, False,
                                   state.val_losses)
        else:
            continue
        break
    best = state.best_val
    if best is not None and not checkpoints.load_best(ckpt_root, model):
        best = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    final = state.losses[-1][1] if state.losses else None
    write_report(out_dir, base, settings, dataset_sha256, len(examples), len(train_records) - len(examples),
                 state.losses, kd_teacher, dev, truncated, state.val_losses, best[0] if best else None, precision)
    return TrainResult(out_dir, state.step, total, final, state.losses, resumed, True, state.val_losses,
                       best[0] if best else None, state.step < total)


def write_report(out_dir: Path, base: Path, settings: TrainSettings, dataset_sha256: str, examples: int,
                 skipped: int, losses: list[tuple[int, float]], kd_teacher: Path | None, dev: str,
                 truncated: int = 0, val_losses: Sequence[tuple[int, float]] = (),
                 best_step: int | None = None, precision: str = "fp32") -> None:
    """training.json (what the export stage reads) and loss.png next to the adapter."""
    import peft
    import transformers

    from .plots import loss_curve

    base = Path(base).resolve()
    TrainingMeta(
        base_model=str(base),
        base_format="gguf" if base.suffix == ".gguf" else "hf",
        dataset_sha256=dataset_sha256,
        examples=examples,
        skipped_examples=skipped,
        truncated_examples=truncated,
        hyperparameters={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        kd_teacher=str(kd_teacher) if kd_teacher else None,
        precision=precision,
        effective_batch_size=settings.effective_batch_size,
        grad_accum=settings.grad_accum,
        gradient_checkpointing=settings.gradient_checkpointing,
        quantize_base=settings.quantize_base,
        steps=len(losses),
        final_loss=losses[-1][1] if losses else None,
        losses=tuple((step, round(loss, 6)) for step, loss in losses),
        validation_losses=tuple((step, round(loss, 6)) for step, loss in val_losses),
        best_step=best_step,
        device=dev,
        versions={"peft": peft.__version__, "transformers": transformers.__version__},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    ).write(out_dir)
    if losses:
        loss_curve(losses, out_dir / LOSS_PNG, val_losses, best_step)
