"""Continuous batching on the real llama.cpp engine: the same answers as one sequence alone, fewer steps."""

import llama_cpp
import pytest

from appliance.engine.llama import LlamaEngine
from appliance.engine.types import SamplingParams

QUESTIONS = [
    "Name three colours of the rainbow.",
    "What is the capital of France?",
    "Write a haiku about snow.",
    "Explain what a CPU does.",
    "Give me a recipe for pancakes.",
    "Who wrote Hamlet?",
]
GREEDY = SamplingParams(max_tokens=32, temperature=0, top_logprobs=2)


@pytest.fixture(scope="module")
def engine(student_path):
    # flash attention on (what `auto` picks on CPU): its results do not depend on how a prompt
    # is split into chunks, so a batched sequence decodes exactly as a lone one.
    engine = LlamaEngine(student_path, "student", n_ctx=512, n_threads=2, parallel=4, flash_attn="on")
    yield engine
    engine.close()


def alone(engine, prompt, params):
    return [(e.token_id, e.logprob) for e in engine.generate(prompt, params)]


def run_batch(engine, arrivals, params):
    """Feed prompts into the engine, each admitted at its step number; returns tokens per prompt and step count."""
    outputs = {i: [] for i in range(len(arrivals))}
    finish = {}
    seq_of = {}
    steps = 0
    pending = sorted(range(len(arrivals)), key=lambda i: arrivals[i][0])
    while pending or engine.active:
        while pending and arrivals[pending[0]][0] <= steps and engine.free:
            i = pending.pop(0)
            seq_of[engine.add(arrivals[i][1], params)] = i
        for result in engine.step():
            i = seq_of[result.seq]
            assert result.error is None
            if result.event is not None:
                outputs[i].append((result.event.token_id, result.event.logprob))
            if result.finish is not None:
                finish[i] = result.finish
        steps += 1
    return outputs, finish, steps


def test_batched_greedy_answers_equal_lone_ones_token_for_token(engine):
    prompts = [engine.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    reference = [alone(engine, p, GREEDY) for p in prompts]
    # Four at once from the start, two more joining mid-answer as sequences free up.
    arrivals = [(0, p) for p in prompts[:4]] + [(5, prompts[4]), (9, prompts[5])]
    outputs, finish, steps = run_batch(engine, arrivals, GREEDY)
    for i, expected in enumerate(reference):
        assert [t for t, _ in outputs[i]] == [t for t, _ in expected], QUESTIONS[i]
        assert [lp for _, lp in outputs[i]] == pytest.approx([lp for _, lp in expected], abs=1e-3)
    assert set(finish.values()) <= {"stop", "length"}
    assert steps < sum(len(r) for r in reference)  # tokens of several answers shared each step


def test_seeded_sampling_in_a_batch_equals_the_same_seed_alone(engine):
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=1234)
    prompts = [engine.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    reference = [alone(engine, p, params) for p in prompts]
    outputs, _, _ = run_batch(engine, [(0, p) for p in prompts], params)
    assert [[t for t, _ in outputs[i]] for i in range(3)] == [[t for t, _ in r] for r in reference]


def test_a_shared_system_prompt_is_reused_not_recomputed(engine):
    system = "You are a meticulous assistant for a home server. " * 12
    first = engine.chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": "Hi."}])
    second = engine.chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": "Bye now."}])
    params = SamplingParams(max_tokens=4, temperature=0)
    state_copies = engine.state_copies
    outputs = copy_and_answer(engine, first, second, params)
    # 130+ cells of a 512-cell stream: llama.cpp copies the whole stream.
    assert engine.state_copies == state_copies
    # The copied cells give the same answer as computing the prompt from scratch.
    assert outputs == [t for t, _ in alone(engine, second, params)]


def copy_and_answer(engine, first, second, params):
    """Start `first`, then admit `second`, which starts the same way: its prefix must be copied from
    the first's sequence, not computed. Returns the second's answer."""
    seq = engine.add(first, params)
    engine.step()  # the first prompt is in the cache now, and its sequence is still answering
    reused, computed = engine.prompt_tokens_reused, engine.prompt_tokens_computed
    other = engine.add(second, params)
    assert other != seq
    saved = engine.prompt_tokens_reused - reused
    assert saved > 100 and engine.prompt_tokens_computed - computed < len(second) - 100
    outputs = {seq: [], other: []}
    while engine.active:
        for result in engine.step():
            if result.event:
                outputs[result.seq].append(result.event.token_id)
    return outputs[other]


def test_a_short_prefix_in_a_long_stream_is_copied_cell_by_cell_with_the_same_answer(student_path):
    system = "You are a meticulous assistant for a home server. " * 12
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": text}]
               for text in ("Hi.", "Bye now.")]
    params = SamplingParams(max_tokens=8, temperature=0)
    big = LlamaEngine(student_path, "student", n_ctx=2048, n_threads=2, parallel=2, flash_attn="on")
    fresh = LlamaEngine(student_path, "student", n_ctx=2048, n_threads=2, parallel=1, flash_attn="on")
    try:
        first, second = (big.chat_prompt(p) for p in prompts)
        answer = copy_and_answer(big, first, second, params)
        assert big.state_copies == 1  # ~140 cells of 2048: only the cells in use were moved
        # A cache that never saw `first`, with the prompt computed in the same two parts (the shared
        # prefix, then the rest): on some CPUs llama.cpp's logits depend on where a prompt is split
        # (seen on AVX-512: a 139-token prompt in chunks of 64 changes the greedy answer), so only
        # the same split isolates what the copy itself does.
        shared = next(i for i, (x, y) in enumerate(zip(first, second)) if x != y)
        warm = fresh.add(second[:shared], params)
        fresh.step()
        fresh.remove(warm)
        assert answer == [t for t, _ in alone(fresh, second, params)]
    finally:
        big.close()
        fresh.close()


def test_a_removed_sequence_frees_its_place_for_the_next_prompt(engine):
    prompt = engine.chat_prompt([{"role": "user", "content": QUESTIONS[0]}])
    params = SamplingParams(max_tokens=50, temperature=0)
    seqs = [engine.add(prompt, params) for _ in range(engine.parallel)]
    assert engine.free == 0
    engine.step()
    engine.remove(seqs[1])
    assert engine.free == 1
    assert engine.add(prompt, params) == seqs[1]
    for seq in list(seqs):
        engine.remove(seq)
    assert engine.active == 0


class GraphPasses:
    """Counts the nodes llama.cpp computes, through its abort callback (checked once per graph node):
    a decode that llama.cpp splits into two micro-batches computes the graph twice."""

    def __init__(self, engine):
        self.nodes = 0
        self._callback = llama_cpp.ggml_abort_callback(self._count)
        llama_cpp.llama_set_abort_callback(engine._ctx, self._callback, None)

    def _count(self, _data):
        self.nodes += 1
        return False

    def step(self, engine):
        before = self.nodes
        results = engine.step()
        return self.nodes - before, results


def test_sequences_with_a_gap_between_their_ids_still_decode_in_one_pass(student_path):
    engine = LlamaEngine(student_path, "student", n_ctx=256, n_threads=2, parallel=4, flash_attn="on")
    try:
        passes = GraphPasses(engine)
        params = SamplingParams(max_tokens=24, temperature=0)
        prompts = [engine.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
        reference = {i: [t for t, _ in alone(engine, prompts[i], params)] for i in (0, 3)}
        seqs = [engine.add(p, params) for p in prompts]
        tokens = {seq: [] for seq in seqs}
        for _ in range(2):  # the prefill, then four generating sequences side by side
            one_pass, results = passes.step(engine)
            for result in results:
                tokens[result.seq].append(result.event.token_id)
        engine.remove(seqs[1])
        engine.remove(seqs[2])  # a gap between sequences 0 and 3, the idle ones holding their cells
        while engine.active:
            nodes, results = passes.step(engine)
            assert nodes == one_pass
            for result in results:
                tokens[result.seq].append(result.event.token_id)
        assert tokens[seqs[0]] == reference[0] and tokens[seqs[3]] == reference[3]
        # The fillers that bridged the gap left nothing in the idle sequences' cells: a prompt
        # that reuses one of them still decodes as it does alone.
        reused = engine.prompt_tokens_reused
        again = [t for t, _ in alone(engine, prompts[1], params)]
        assert engine.prompt_tokens_reused - reused == len(prompts[1]) - 1
        engine_fresh = LlamaEngine(student_path, "fresh", n_ctx=256, n_threads=2, parallel=1, flash_attn="on")
        try:
            assert again == [t for t, _ in alone(engine_fresh, prompts[1], params)]
        finally:
            engine_fresh.close()
    finally:
        engine.close()


def test_an_interrupted_step_leaves_the_answers_exactly_as_they_were(engine, student_path):
    params = SamplingParams(max_tokens=12, temperature=0, top_logprobs=2)
    # Questions this engine has not seen, so the first step is a real prefill.
    prompts = [engine.chat_prompt([{"role": "user", "content": f"In short: {q}"}]) for q in QUESTIONS[:2]]
    fresh = LlamaEngine(student_path, "fresh", n_ctx=512, n_threads=2, parallel=1, flash_attn="on")
    try:
        reference = [alone(fresh, p, params) for p in prompts]
    finally:
        fresh.close()
    seqs = [engine.add(p, params) for p in prompts]
    outputs = {seq: [] for seq in seqs}
    cut = engine.interrupted_steps

    def record(results):
        for result in results:
            if result.event is not None:
                outputs[result.seq].append((result.event.token_id, result.event.logprob))

    engine.interrupt()
    record(engine.step())  # a prefill is never cut
    assert engine.interrupted_steps == cut and all(len(o) == 1 for o in outputs.values())
    engine.interrupt()
    assert engine.step() == [] and engine.interrupted_steps == cut + 1  # a generating step is
    engine.interrupt()
    record(engine.step())  # but never twice in a row: the answers always move on
    assert engine.interrupted_steps == cut + 1 and all(len(o) == 2 for o in outputs.values())
    while engine.active:
        record(engine.step())
    for seq, expected in zip(seqs, reference):
        assert [t for t, _ in outputs[seq]] == [t for t, _ in expected]
        assert [lp for _, lp in outputs[seq]] == pytest.approx([lp for _, lp in expected], abs=1e-3)
