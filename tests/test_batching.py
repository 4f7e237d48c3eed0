"""The pure rules of continuous batching: where a prompt goes and what one decode step feeds."""

from appliance.engine.batching import (
    Feed,
    Placement,
    common_prefix,
    copy_by_state,
    in_stream_order,
    interruptible,
    place_prompt,
    plan_step,
)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_a_prompt_goes_to_the_free_slot_holding_its_longest_prefix():
    contents = {0: [9, 9, 9], 1: [1, 2, 3, 4], 2: []}
    assert place_prompt([0, 1, 2], contents, [1, 2, 3, 7, 8]) == Placement(slot=1, source=1, reuse=3)


def test_the_last_prompt_token_is_always_fed_again():
    contents = {0: [1, 2, 3]}
    assert place_prompt([0], contents, [1, 2, 3]).reuse == 2


def test_without_a_matching_prefix_the_emptiest_free_slot_is_taken():
    contents = {0: [5] * 50, 1: [6] * 10, 2: [7] * 30}
    assert place_prompt([0, 1, 2], contents, [1, 2, 3]) == Placement(slot=1, source=1, reuse=0)


def test_a_long_prefix_held_by_a_busy_sequence_is_copied():
    system = list(range(100, 200))
    contents = {0: system + [1, 2, 3], 1: []}
    placement = place_prompt([1], contents, system + [4, 5], min_copy=32)
    assert placement == Placement(slot=1, source=0, reuse=100)


def test_a_short_shared_prefix_is_not_worth_a_copy():
    contents = {0: [1, 2, 3, 4, 5], 1: [1]}
    placement = place_prompt([1], contents, [1, 2, 3, 4, 9], min_copy=32)
    assert placement == Placement(slot=1, source=1, reuse=1)


def test_a_prefix_is_copied_cell_by_cell_only_while_it_fills_at_most_a_quarter_of_the_stream():
    assert copy_by_state(40, 2048) and copy_by_state(512, 2048)
    assert not copy_by_state(513, 2048) and not copy_by_state(140, 512)


def test_generating_sequences_are_fed_before_prompt_chunks_within_the_budget():
    pending = {0: list(range(10, 50)), 1: [7], 2: list(range(60, 70)), 3: [8]}
    positions = {0: 0, 1: 33, 2: 5, 3: 12}
    feeds = plan_step(pending, positions, order=[0, 1, 2, 3], budget=20)
    assert feeds == [
        Feed(1, (7,), 33, True),
        Feed(3, (8,), 12, True),
        Feed(0, tuple(range(10, 28)), 0, False),  # the rest of the budget, no logits mid-prompt
    ]


def test_a_prompt_that_fits_asks_for_logits_on_its_last_token():
    feeds = plan_step({0: [1, 2, 3], 1: [4, 5]}, {0: 0, 1: 0}, order=[1, 0], budget=512)
    assert feeds == [Feed(1, (4, 5), 0, True), Feed(0, (1, 2, 3), 0, True)]


def test_a_prompts_only_step_leaves_the_generating_sequences_out():
    pending = {0: [7], 1: list(range(10, 15)), 2: [8]}
    positions = {0: 20, 1: 0, 2: 9}
    assert plan_step(pending, positions, order=[0, 1, 2], budget=512, prompts_only=True) == [
        Feed(1, (10, 11, 12, 13, 14), 0, True)
    ]
    # Nothing to prefill: the generating sequences are fed as usual.
    assert len(plan_step({0: [7], 2: [8]}, positions, order=[0, 2], budget=512, prompts_only=True)) == 2


def test_feeds_go_in_sequence_order_with_gaps_bridged_by_one_token_fillers():
    feeds = [Feed(3, (9,), 40, True), Feed(0, (7,), 20, True), Feed(1, (8,), 30, True)]
    fillers = {2: (5, 11), 4: (6, 0)}  # 4 lies outside the fed range: no filler for it
    assert in_stream_order(feeds, fillers, room=8) == [
        Feed(0, (7,), 20, True), Feed(1, (8,), 30, True), Feed(2, (5,), 11, False, filler=True),
        Feed(3, (9,), 40, True),
    ]


def test_a_gap_without_a_filler_or_without_room_stays_a_gap():
    feeds = [Feed(0, (7,), 20, True), Feed(3, (9,), 40, True)]
    assert [f.seq for f in in_stream_order(feeds, {1: (5, 3)}, room=8)] == [0, 1, 3]  # 2's stream is full
    assert [f.seq for f in in_stream_order(feeds, {1: (5, 3), 2: (5, 3)}, room=1)] == [0, 1, 3]
    assert [f.seq for f in in_stream_order(feeds, {1: (5, 3), 2: (5, 3)}, room=0)] == [0, 3]


def test_prompt_chunks_are_not_bridged():
    # A one-token filler would cut every sequence's share of the first micro-batch to one token.
    feeds = [Feed(2, (1, 2, 3), 0, True), Feed(0, (4, 5), 0, True)]
    assert in_stream_order(feeds, {1: (5, 3)}, room=8) == [Feed(0, (4, 5), 0, True), Feed(2, (1, 2, 3), 0, True)]


def test_only_a_step_of_generated_tokens_in_one_micro_batch_may_be_cut_short():
    assert interruptible([Feed(2, (7,), 9, True), Feed(3, (8,), 4, True), Feed(4, (1,), 0, False, filler=True)])
    assert not interruptible([Feed(0, (7,), 9, True), Feed(1, (8, 9), 4, True)])  # a prompt chunk
    assert not interruptible([Feed(0, (7,), 9, True), Feed(2, (8,), 4, True)])  # two micro-batches
    assert not interruptible([])


def test_a_seeded_prompt_reuses_no_cells_and_takes_the_emptiest_slot():
    contents = {0: [1, 2, 3, 4], 1: [9], 2: [1, 2, 3, 4, 5, 6]}
    assert place_prompt([0, 1], contents, [1, 2, 3, 4, 7], reuse_prefix=False) == Placement(slot=1, source=1, reuse=0)
    assert place_prompt([0, 1], contents, [1, 2, 3, 4, 7]).reuse == 4  # unseeded: the prefix is reused
