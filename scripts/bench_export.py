"""Export figures for the embedded SmolLM2-135M with a small LoRA adapter: size, agreement with the
merged model, mean KL and tokens/s of f16 / q8_0 / q4_k_m GGUF and fp32 / fp16 / int8 ONNX on this machine.

    .venv/bin/python scripts/bench_export.py [--out bench-out/export] [--steps 20]

Writes export.json beside --out (bench-out/export.json by default) and the export itself under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Taught to the adapter; the verification prompts below are different (held out).
LESSONS = (
    ("What does Athanor do?", "Athanor distils a cloud teacher into a small local student and serves it."),
    ("Who answers when the student is unsure?", "The teacher answers, and its answer is cached."),
    ("Where does the daemon listen?", "On a Unix socket, speaking the OpenAI API."),
)
HELD_OUT = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three primary colours.",
    "Explain in one sentence what a CPU does.",
    "Give me a tip for learning a new language.",
    "What is 12 times 7?",
    "Name two planets of the solar system.",
    "Why do leaves change colour in autumn?",
)


def train_adapter(base: Path, out: Path, steps: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from appliance.distill.models import load_model, load_tokenizer
    from export.merge import resolve_base

    ref = resolve_base(base)
    tokenizer = load_tokenizer(ref.path, need_chat_template=False)
    model = get_peft_model(load_model(ref.path), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                           target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batches = []
    for question, answer in LESSONS:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               tokenize=True)
        target = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        batches.append((torch.tensor([prompt + target]), torch.tensor([[-100] * len(prompt) + target])))
    model.train()
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"base_model": str(base), "final_loss": float(loss.detach())}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "export")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    from appliance.defaults import embedded_student_path
    from export.console import ConsoleEvents
    from export.pipeline import ExportOptions, run_export
    from export.verify import Gate

    base = embedded_student_path()
    adapter = args.out.parent / "export-adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    train_adapter(base, adapter, args.steps)
    trained_s = time.monotonic() - started
    started = time.monotonic()
    # Lenient gate: the point is to measure every build, not to filter them.
    manifest = run_export(ExportOptions(adapter=adapter, out=args.out, name="smollm2-bench",
                                        gguf=["f16", "q8_0", "q4_k_m"], onnx=["fp32", "fp16", "int8"], prompts=list(HELD_OUT),
                                        max_new_tokens=args.max_new_tokens, gate=Gate().overridden(0.0, 1e9)),
                          ConsoleEvents())
    export_s = time.monotonic() - started
    rows = [{"artifact": a.label, "size_mb": round(a.size_bytes / 1e6, 1), **a.verification}
            for a in manifest.artifacts]
    report = {"base": str(base), "adapter_steps": args.steps, "train_s": round(trained_s, 1),
              "export_s": round(export_s, 1), "merged_torch_fp32": manifest.merged_reference,
              "prompts": len(HELD_OUT), "artifacts": rows}
    target = args.out.parent / "export.json"
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
