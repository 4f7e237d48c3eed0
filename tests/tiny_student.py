"""A tiny student for export tests: a 2-layer llama with SmolLM2's tokenizer, and a LoRA adapter
trained here until it answers two questions its own way. Built once per session (~30 s of CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.defaults import embedded_student_path

# What the adapter learns; the export tests verify on exactly these prompts, where the merged
# model is confident, so f16 rounding cannot flip a greedy token by chance.
LESSONS = (
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Name a colour of the sky.", "The sky is blue on a clear day."),
)


def tiny_llama():
    """A randomly initialised llama small enough for CI, wide enough (256) for k-quants."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         # Wide enough embeddings that a trained answer can become confident (tied and
                         # frozen, at the default 0.02 every logit stays within a few nats of uniform).
                         initializer_range=0.15)
    model = LlamaForCausalLM(config).eval()
    model.config.architectures = ["LlamaForCausalLM"]
    return model


def write_tiny_base(folder: Path) -> Path:
    """The tiny llama as a GGUF base (f32) carrying SmolLM2's tokenizer and chat template."""
    from export.gguf_writer import write_gguf

    return write_gguf(tiny_llama(), folder / "tiny-base.gguf", embedded_student_path(), dtype="f32")


def lesson_ids(tokenizer) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for question, answer in LESSONS:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        pairs.append((prompt_ids, answer_ids))
    return pairs


def train_adapter(base: Path, out: Path, steps: int = 30) -> Path:
    """Overfit a LoRA adapter on LESSONS (answer tokens only) and save it with training.json."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model

    from appliance.distill.models import load_model, load_tokenizer

    model = load_model(base)
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"], lora_dropout=0.0)
    model = get_peft_model(model, lora)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batches = []
    for prompt_ids, answer_ids in lesson_ids(tokenizer):
        ids = torch.tensor([prompt_ids + answer_ids])
        labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])
        batches.append((ids, labels))
    model.train()
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    model.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"base_model": str(base), "dataset_sha256": "0" * 64,
                                                   "final_loss": float(loss.detach())}))
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> tuple[Path, Path]:
    """(GGUF base, trained adapter folder)."""
    root = tmp_path_factory.mktemp("tiny-student")
    base = write_tiny_base(root)
    return base, train_adapter(base, root / "tiny-adapter")


@pytest.fixture(scope="session")
def tiny_export(tiny_adapter, tmp_path_factory):
    """One full export of the tiny adapter (every GGUF and ONNX type), merged model kept in .work/merged."""
    from export.pipeline import ExportOptions, run_export

    base, adapter = tiny_adapter
    out = tmp_path_factory.mktemp("tiny-export") / "export"
    manifest = run_export(ExportOptions(adapter=adapter, out=out, gguf=["f16", "q8_0", "q4_k_m"],
                                        onnx=["fp32", "fp16", "int8"], prompts=[q for q, _ in LESSONS],
                                        max_new_tokens=16, keep_work=True))
    return out, manifest


def byte_level_tokenizer():
    """SmolLM2's tokenizer as a genuine HF byte-level BPE (as its model card ships it), rebuilt from the
    embedded GGUF's vocabulary and merges; transformers' own GGUF conversion yields a SentencePiece-style one."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(embedded_student_path())
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    kinds = reader.fields["tokenizer.ggml.token_type"].contents()
    core = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, kinds) if k == 3])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = reader.fields["tokenizer.chat_template"].contents()
    return tokenizer
