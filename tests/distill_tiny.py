"""A tiny real causal LM for the distillation tests: a Llama of 2 layers and width 64, with a
byte-level BPE tokenizer trained on the task's words and a ChatML chat template. Random weights:
before training it answers gibberish; whatever it learns, it learned from the teacher's data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import distill_task

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|im_start|>", "<|im_end|>", "<pad>"]


def corpus() -> list[str]:
    words = [*distill_task.POSITIVE, *distill_task.NEGATIVE, *distill_task.NOUNS, *distill_task.OPENERS]
    return [p["prompt"] for p in distill_task.prompts(400, seed=99)] + [
        " ".join(words), "positive negative", "system user assistant", "Review: Sentiment?",
        "You are a helpful assistant.",
    ]


def build_tiny_model(folder: Path, vocab_size: int = 600, hidden: int = 64, seed: int = 0) -> Path:
    """Write a tiny Llama (safetensors) and its tokenizer into `folder`; returns the folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                        pad_token="<pad>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model, built once for each test module that asks for it."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def records():
    """Twelve sentiment records of the task, labelled with the expected answer."""
    from appliance.distill.records import Record

    return [Record(prompt=p["prompt"], answer=p["expected"], category="sentiment") for p in distill_task.prompts(12)]
