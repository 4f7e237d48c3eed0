"""The llama.cpp engine on the embedded SmolLM2 student, checked against llama-cpp-python's own Llama."""

import math

import numpy as np
import pytest
from llama_cpp import Llama

from appliance.engine.llama import EngineError, LlamaEngine, log_softmax_at, top_k_logprobs
from appliance.engine.types import SamplingParams

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def engine(student_path):
    engine = LlamaEngine(student_path, "student", n_ctx=1024, n_threads=2)
    yield engine
    engine.close()


def run(engine, prompt, **params):
    generator = engine.generate(prompt, SamplingParams(**{"max_tokens": 24, **params}))
    tokens = []
    while True:
        try:
            tokens.append(next(generator))
        except StopIteration as stop:
            return tokens, stop.value


def test_logprob_helpers_match_a_plain_softmax():
    logits = np.array([2.0, 1.0, 0.5, -3.0], dtype=np.float32)
    probs = np.exp(logits) / np.exp(logits).sum()
    assert math.isclose(log_softmax_at(logits, 1), math.log(probs[1]), rel_tol=1e-5)
    top = top_k_logprobs(logits, 2)
    assert [t for t, _ in top] == [0, 1]
    assert math.isclose(top[0][1], math.log(probs[0]), rel_tol=1e-5)


@pytest.mark.parametrize("flash_attn", ["off", "on"])
def test_greedy_tokens_match_llama_cpp_python(student_path, flash_attn):
    engine = LlamaEngine(student_path, "student", n_ctx=1024, n_threads=2, flash_attn=flash_attn)
    prompt = engine.chat_prompt(QUESTION)
    ours, _ = run(engine, prompt, temperature=0)
    engine.close()
    reference = Llama(str(student_path), n_ctx=1024, n_threads=2, flash_attn=flash_attn == "on", verbose=False)
    theirs = []
    for token in reference.generate(prompt, temp=0.0, top_k=1):
        if reference.token_eos() == token or len(theirs) == 24:
            break
        theirs.append(token)
    reference.close()
    assert [t.token_id for t in ours] == theirs


def test_logprobs_are_real_log_probabilities(engine):
    tokens, _ = run(engine, engine.chat_prompt(QUESTION), temperature=0, top_logprobs=3)
    for token in tokens:
        assert token.logprob <= 0
        # Greedy picks the most likely token, so it heads the top list with the same log-probability.
        assert token.top[0].raw == token.raw
        assert math.isclose(token.top[0].logprob, token.logprob, abs_tol=1e-4)
        assert token.top[0].logprob >= token.top[1].logprob >= token.top[2].logprob
    # Across the answer the model is at least sometimes unsure: not all probabilities are 1.
    assert min(t.logprob for t in tokens) < -0.01


def test_prefix_reuse_does_not_change_the_answer(engine):
    prompt = engine.chat_prompt(QUESTION)
    first, _ = run(engine, prompt, temperature=0)
    run(engine, engine.chat_prompt([{"role": "user", "content": "Something else entirely."}]), temperature=0)
    again, _ = run(engine, prompt, temperature=0)  # shares only the system prefix with the previous prompt
    same, _ = run(engine, prompt, temperature=0)  # shares the whole prompt
    assert [t.token_id for t in first] == [t.token_id for t in again] == [t.token_id for t in same]


def test_seed_makes_sampling_repeatable(engine):
    prompt = engine.chat_prompt(QUESTION)
    a, _ = run(engine, prompt, temperature=1.0, seed=42)
    b, _ = run(engine, prompt, temperature=1.0, seed=42)
    assert [t.token_id for t in a] == [t.token_id for t in b]
    others = {tuple(t.token_id for t in run(engine, prompt, temperature=1.5, seed=s)[0]) for s in range(5)}
    assert len(others) > 1


def test_max_tokens_and_cancel_end_the_answer(engine):
    prompt = engine.chat_prompt(QUESTION)
    tokens, reason = run(engine, prompt, temperature=0, max_tokens=3)
    assert len(tokens) == 3 and reason == "length"
    generator = engine.generate(prompt, SamplingParams(max_tokens=50, temperature=0), cancelled=lambda: True)
    with pytest.raises(StopIteration) as stop:
        next(generator)
    assert stop.value.value == "cancelled"


def test_a_prompt_longer_than_the_context_is_refused(engine):
    with pytest.raises(EngineError, match="does not fit"):
        run(engine, [1] * 2000)


def test_a_broken_model_file_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(EngineError, match="could not load a model"):
        LlamaEngine(broken, "broken")

