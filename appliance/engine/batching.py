"""Pure planning for continuous batching: which KV slot a prompt takes and what one decode step feeds.

No llama.cpp here, so the rules are tested without a model. The engine keeps, per sequence,
the tokens its KV cells hold and the tokens still to feed (a prompt's unprocessed tail, or the
last sampled token); each step feeds every sequence's pending tokens that fit in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest shared prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Placement:
    """Where a new prompt goes: `slot` receives it, reusing `reuse` tokens of `source`'s KV cells."""

    slot: int
    source: int
    reuse: int


def place_prompt(free: Sequence[int], contents: Mapping[int, Sequence[int]], prompt: Sequence[int],
                 min_copy: int = 0, reuse_prefix: bool = True) -> Placement:
    """Choose a free slot for `prompt` and the sequence whose cached prefix it can reuse.

    Any sequence's cells can be copied (busy ones too: their prefix is not going to change), so
    a system prompt in use by one client is not computed again for the next; a copy is taken
    only when it saves more than `min_copy` tokens over the slot's own prefix, because copying
    costs a pass over the slot's memory. The free slot itself is chosen to lose the least: its
    own matching prefix first, then the shortest content. The last prompt token is always fed
    again, because its logits start the answer.

    `reuse_prefix=False` (a request with a seed) computes the whole prompt afresh in the emptiest free
    slot: reused cells were computed in other chunks and batches, whose floating-point sums differ in
    the last bits, enough to change a sampled token; computed afresh, the same request gives the same
    answer every time it is decoded alone.
    """
    if not free:
        raise ValueError("no free slot")
    if not reuse_prefix:
        slot = min(free, key=lambda s: (len(contents.get(s, ())), s))
        return Placement(slot, slot, 0)
    limit = max(0, len(prompt) - 1)
    own = {slot: min(limit, common_prefix(contents.get(slot, ()), prompt)) for slot in free}
    slot = max(free, key=lambda s: (own[s], -len(contents.get(s, ())), -s))
    source, reuse = slot, own[slot]
    for other, tokens in contents.items():
        shared = min(limit, common_prefix(tokens, prompt))
        if shared > reuse and shared - own[slot] > min_copy:
            source, reuse = other, shared
    return Placement(slot, source, reuse)


def copy_by_state(cells: int, n_ctx: int) -> bool:
    """Whether to copy a sequence's `cells` KV cells into another stream through llama.cpp's sequence
    state (which moves only the cells in use) rather than `seq_cp` (which moves the whole stream of
    `n_ctx` cells, in one fast copy). Measured on 2 CPU cores, SmolLM2-135M F16: 40 cells by state
    0.8-1.1 ms; a stream by seq_cp 1.9 / 3.4 / 11.5 ms at n_ctx 1024 / 2048 / 8192; per cell the
    state copy is about 5x slower, so it wins up to a quarter of the stream."""
    return cells * 4 <= n_ctx


@dataclass(frozen=True)
class Feed:
    """One sequence's share of a decode step: tokens at positions start.., logits wanted for the last one.

    A `filler` feed only bridges a gap between sequence ids (see `in_stream_order`); its cell is
    removed after the step.
    """

    seq: int
    tokens: tuple[int, ...]
    start: int
    wants_logits: bool
    filler: bool = False


def plan_step(pending: Mapping[int, Sequence[int]], positions: Mapping[int, int], order: Sequence[int],
              budget: int, prompts_only: bool = False) -> list[Feed]:
    """What one `llama_decode` feeds, within `budget` tokens, in admission order (`order`).

    Normally every generating sequence's token goes first, so streaming clients keep their pace
    while a long prompt is prefilled in chunks behind them. With `prompts_only` (when prompts are
    waiting) the step feeds new prompts alone: on a CPU every token in a step costs compute, so
    leaving the generating tokens out brings a newcomer's first token sooner; the engine never
    takes two such steps in a row, so a stream stalls for one step at most. `positions` is where
    each sequence's pending tokens start.
    """
    generating = [s for s in order if len(pending[s]) == 1]
    prefilling = [s for s in order if len(pending[s]) > 1]
    chosen = prefilling if prompts_only and prefilling else generating + prefilling
    feeds: list[Feed] = []
    left = budget
    for seq in chosen:
        if left <= 0:
            break
        tokens = tuple(pending[seq][:left])
        if not tokens:
            continue
        feeds.append(Feed(seq, tokens, positions[seq], len(tokens) == len(pending[seq])))
        left -= len(tokens)
    return feeds


def interruptible(feeds: Sequence[Feed]) -> bool:
    """Whether a step may be abandoned part-way: llama.cpp then removes the cells of the micro-batch
    it was computing, so only a step that is one micro-batch (consecutive sequence ids) of single
    generated tokens leaves the cache exactly as before it."""
    seqs = [f.seq for f in feeds]
    return bool(feeds) and all(len(f.tokens) == 1 for f in feeds) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def in_stream_order(feeds: Sequence[Feed], fillers: Mapping[int, tuple[int, int]], room: int) -> list[Feed]:
    """The step's feeds as llama.cpp can take them in one micro-batch: sorted by sequence id, gaps bridged.

    With one KV stream per sequence, llama.cpp splits a batch into micro-batches of consecutive
    sequence ids only, each of which is a full pass over the weights: sequences 3, 0, 1 fed in
    that order cost three passes, and 0, 1, 3 cost two. So feeds go in id order and, when the
    step's shortest feed is one token (a generating step, where all sequences share the first
    micro-batch), every sequence in a gap gets a one-token filler from `fillers` (seq -> (token,
    position)), which costs one token's compute instead of a pass, as long as `room` tokens are
    left in the batch. A gap `fillers` does not offer (a full stream) or there is no room for
    leaves the split in place.
    """
    ordered = sorted(feeds, key=lambda f: f.seq)
    if not ordered or min(len(f.tokens) for f in ordered) != 1:
        return ordered
    fed = {f.seq for f in ordered}
    gaps = [seq for seq in range(ordered[0].seq + 1, ordered[-1].seq) if seq not in fed and seq in fillers]
    bridged = [Feed(seq, (fillers[seq][0],), fillers[seq][1], False, filler=True) for seq in gaps[:max(0, room)]]
    return sorted(ordered + bridged, key=lambda f: f.seq)
