"""The llama.cpp engine on the embedded SmolLM2 student, checked against llama-cpp-python's own Llama."""

import math
from collections import Counter

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



# --- logit_bias and penalties, through llama.cpp's sampler chain ------------------------------------

REPEAT = [{"role": "user", "content": "Repeat the word 'apple' twenty times."}]


def test_a_bias_of_minus_100_keeps_a_token_out_of_a_greedy_answer(engine):
    prompt = engine.chat_prompt(QUESTION)
    plain, _ = run(engine, prompt, temperature=0, max_tokens=12)
    banned = {plain[0].token_id, plain[1].token_id}
    biased, _ = run(engine, prompt, temperature=0, max_tokens=12, logit_bias=tuple((t, -100.0) for t in sorted(banned)))
    assert biased and not banned & {t.token_id for t in biased}
    # The log-probabilities reported stay the model's own, not the biased ones.
    assert all(t.logprob <= 0 for t in biased)


def test_a_ban_holds_when_sampling_too(engine):
    prompt = engine.chat_prompt(QUESTION)
    plain, _ = run(engine, prompt, temperature=0, max_tokens=4)
    banned = plain[0].token_id
    sampled, _ = run(engine, prompt, temperature=1.5, seed=7, max_tokens=12, logit_bias=((banned, -100.0),))
    assert banned not in {t.token_id for t in sampled}


def test_a_bias_of_plus_100_forces_a_token(engine):
    prompt = engine.chat_prompt(QUESTION)
    forced = engine.tokenize("Purple", add_special=False)[0]
    tokens, _ = run(engine, prompt, temperature=0, max_tokens=2, logit_bias=((forced, 100.0),))
    assert tokens[0].token_id == forced


@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_penalties_stop_a_greedy_answer_repeating_itself(engine, penalty):
    prompt = engine.chat_prompt(REPEAT)
    plain, _ = run(engine, prompt, temperature=0, max_tokens=16)
    word, repeats = Counter(t.token_id for t in plain).most_common(1)[0]
    assert repeats >= 5  # "apple, apple, apple, ..." without a penalty
    penalized, _ = run(engine, prompt, temperature=0, max_tokens=16, **{penalty: 2.0})
    assert Counter(t.token_id for t in penalized)[word] < repeats
    # A negative penalty (OpenAI allows -2..0) is applied too: it only encourages the repetition here.
    encouraged, _ = run(engine, prompt, temperature=0, max_tokens=16, **{penalty: -2.0})
    assert Counter(t.token_id for t in encouraged)[word] >= repeats


def test_default_params_leave_the_answer_as_before(engine):
    prompt = engine.chat_prompt(QUESTION)
    plain, _ = run(engine, prompt, temperature=0, max_tokens=8)
    zero, _ = run(engine, prompt, temperature=0, max_tokens=8, frequency_penalty=0.0, presence_penalty=0.0,
                  logit_bias=((plain[0].token_id, 0.0),))
    assert [t.token_id for t in zero] == [t.token_id for t in plain]


def test_a_bias_on_a_token_past_the_vocabulary_is_refused(engine):
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.add([1, 2, 3], SamplingParams(max_tokens=1, logit_bias=((engine.n_vocab, -100.0),)))
    assert engine.active == 0


def test_the_onnx_engine_applies_bias_and_penalties_the_same_way():
    from appliance.engine.onnx import OnnxEngine, adjusted_logits

    row = np.array([3.0, 2.0, 1.0, 0.0], dtype=np.float32)
    plain = SamplingParams(max_tokens=1)
    assert adjusted_logits(row, plain, {0: 3}) is row  # nothing asked: nothing copied, nothing changed
    banned = adjusted_logits(row, SamplingParams(max_tokens=1, logit_bias=((0, -100.0), (3, 0.5))), {})
    assert banned[0] == -np.inf and banned[3] == 0.5 and row[0] == 3.0
    rng = np.random.default_rng(0)
    assert OnnxEngine._choose(banned, SamplingParams(max_tokens=1, temperature=0), rng) == 1
    assert all(OnnxEngine._choose(banned, SamplingParams(max_tokens=1, temperature=2.0), rng) != 0 for _ in range(200))
    # OpenAI's formula: logit - count * frequency_penalty - (count > 0) * presence_penalty, generated tokens only.
    both = SamplingParams(max_tokens=1, frequency_penalty=0.5, presence_penalty=0.25)
    np.testing.assert_allclose(adjusted_logits(row, both, {0: 3, 2: 1}), [3.0 - 1.5 - 0.25, 2.0, 1.0 - 0.5 - 0.25, 0.0])
