import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from histenc.context import SectionGrid
from histenc.framepack.schedule import (
    F1,
    PAPER_SCHEDULES,
    Generate,
    Kernel,
    Pack,
    Schedule,
    Segment,
    Tail,
    parse_schedule,
)

GRID_480P = SectionGrid(9, 60, 104)  # 832x480 through an 8x VAE, 9 latent frames
L_F = 30 * 52  # DiT cells per latent frame at 480p: 1560


@pytest.mark.parametrize("name", PAPER_SCHEDULES)
def test_every_paper_schedule_round_trips_and_has_a_length(name):
    schedule = parse_schedule(name)
    assert str(schedule) == name
    assert parse_schedule(str(schedule)) == schedule
    length = schedule.context_length(GRID_480P, history_frames=600)
    assert 0 < length < 10 * L_F


def test_paper_table_has_37_distinct_variants():
    assert len(set(PAPER_SCHEDULES)) == len(PAPER_SCHEDULES) == 38  # 37 from the table + the text's example


def test_typed_structure_of_the_paper_example():
    s = parse_schedule("td_f16k4f4k2f1k1_g9_x_f1k1+D")
    assert s.parts[0] == Tail("d")
    assert s.parts[1] == Pack(
        (Segment(16, Kernel(4, 8, 8, True)), Segment(4, Kernel(2, 4, 4, True)), Segment(1, Kernel(1, 2, 2, True)))
    )
    assert s.parts[2] == Generate(9)
    assert s.discrete == "D" and s.generate_frames == 9
    assert [seg.frames for seg in s.before.near] == [1, 4, 16]  # nearest first
    assert s.before.tail == Tail("d") and s.after.anchors == ((Segment(1, Kernel(1, 2, 2, True)),),)
    assert s.sampling == "endpoint"


def test_shorthand_and_explicit_kernels_are_the_same_footprint_but_print_as_written():
    assert parse_schedule("f1k1h2w2").kernels[0].size == parse_schedule("f1k1").kernels[0].size == (1, 2, 2)
    assert str(parse_schedule("f1k1h2w2_g9")) == "f1k1h2w2_g9"
    assert parse_schedule("f1k16").kernels[0].size == (16, 32, 32)
    assert str(parse_schedule("f2k1h4w8+d")) == "f2k1h4w8+d"


def test_context_length_at_480p_counted_by_hand():
    # f1k1: 30*52 = 1560; f4k2: 2 * 15 * 26 = 780; f16k4: 4 * ceil(60/8) * 13 = 416
    s = parse_schedule("td_f16k4f4k2f1k1_g9")
    assert s.context_length(GRID_480P, 21) == 1560 + 780 + 416
    assert s.context_length(GRID_480P, 1) == 1560
    assert s.context_length(GRID_480P, 3) == 1560 + 390  # two frames fill one k2 step
    assert s.context_length(GRID_480P, 10_000) == s.context_length(GRID_480P, 21)
    assert s.total_length(GRID_480P, 21) == 2756 + 9 * L_F


def test_the_f1_preset_is_framepacks_layout_with_every_slot_filled():
    s = parse_schedule(F1)
    assert str(s) == "framepack_f1" and s.preset == F1 and s.fixed_slots and s.generate_frames == 9
    assert str(parse_schedule("framepack_f1_g5")) == "framepack_f1_g5" and parse_schedule("framepack_f1_g5").fixed_slots
    assert [seg.frames for seg in s.before.near] == [1, 2, 16] and s.before.anchor_frames == 1
    assert [k.size for k in s.kernels] == [(1, 2, 2), (4, 8, 8), (2, 4, 4)] and s.sampling == "vanilla"
    # start slot and 1x: 1560 each; 2x: 15 * 26 = 390; 4x: 4 * ceil(60 / 8) * 13 = 416; the same from one frame on
    full = 1560 + 1560 + 390 + 416
    assert [s.context_length(GRID_480P, n) for n in (0, 1, 2, 19, 20, 600)] == [0] + [full] * 5
    plain = parse_schedule("f1k1_x_f16k4f2k2f1k1_g9")
    assert plain.context_length(GRID_480P, 1) == 1560 and plain.context_length(GRID_480P, 20) == full
    assert s != plain and s.before == plain.before


@pytest.mark.parametrize(
    "text", ["framepack_f1x", "framepack_f1_g0", "framepack_f1_g", "framepack_f1_g9", "framepack_f1+D"]
)
def test_a_misspelt_f1_preset_is_one_sentence(text):
    with pytest.raises(ValueError, match=f"schedule '{re.escape(text)}' starts like the F1 preset but is not it"):
        parse_schedule(text)


def test_tails_change_the_count_as_described():
    grid = SectionGrid(9, 60, 104)
    full = parse_schedule("td_f16k4f2k2f1k1_g9").context_length(grid, 19)
    assert parse_schedule("td_f16k4f2k2f1k1_g9").context_length(grid, 119) == full
    assert parse_schedule("ta_f16k4f2k2f1k1_g9").context_length(grid, 119) == full + 100  # one token per tail frame
    assert parse_schedule("tc_f16k4f2k2f1k1_g9").context_length(grid, 119) == full + 8 * 13  # one k4 step


def test_sampling_order_read_from_the_name():
    assert parse_schedule("td_f16k4f4k2f1k1_g9").sampling == "vanilla"
    assert parse_schedule("td_f16k4f4k2f1k1_g9_x_f1k1").sampling == "endpoint"
    inverted = parse_schedule("f1k1_x_g9_f1k1f4k2f16k4_td")
    assert inverted.sampling == "inverted" and inverted.inverted
    assert [s.frames for s in inverted.after.near] == [1, 4, 16]
    # history_frames feed the main (after) side; the first-frame anchor is there by default
    assert inverted.context_length(GRID_480P, 21) == 1560 + 2756
    assert inverted.context_length(GRID_480P, 21, other_frames=0) == 2756


def test_sliding_window_is_a_schedule():
    s = parse_schedule("f8k1")
    assert s.generate_frames is None and s.sampling == "vanilla"
    assert s.context_length(GRID_480P, 3) == 3 * L_F and s.context_length(GRID_480P, 50) == 8 * L_F


@pytest.mark.parametrize(
    "text, position, expected",
    [
        ("td_f16kx_g9", 7, "kernel frames"),
        ("td_f16k4f4k2f1k1_g", 18, "generated frames"),
        ("td_f16k4q", 8, "'_' between parts"),
        ("tq_f1k1", 1, "tail mode"),
        ("f1k1h2_g9", 6, "'w'"),
        ("f01k1", 1, "a number"),
        ("f1k1_g9+X", 8, "'D'"),
        ("f1k1__g9", 5, "a part"),
        ("f1k1_td_g9", 5, "a tail only as the first or last part"),
        ("x_x_g9", 2, "second skip"),
        ("", 0, "a part"),
    ],
)
def test_syntax_errors_name_position_and_expected_token(text, position, expected):
    with pytest.raises(ValueError) as err:
        parse_schedule(text)
    message = str(err.value)
    assert f"at position {position} expected" in message and expected in message


def test_non_string_is_a_value_error():
    with pytest.raises(ValueError, match="must be a string"):
        parse_schedule(None)


ALPHABET = "fkhwtdacgx_+D0123456789"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(ALPHABET), max_size=30) | st.text(max_size=20))
def test_fuzz_only_value_errors(text):
    try:
        schedule = parse_schedule(text)
    except ValueError:
        return
    assert str(schedule) == text
    schedule.context_length(SectionGrid(9, 6, 10), 7)


numbers = st.integers(1, 64)
kernels = st.one_of(
    numbers.map(lambda t: f"k{t}"), st.tuples(numbers, numbers, numbers).map(lambda k: "k{}h{}w{}".format(*k))
)
packs = st.lists(st.tuples(numbers, kernels).map(lambda s: f"f{s[0]}{s[1]}"), min_size=1, max_size=4).map("".join)


@st.composite
def schedules(draw):
    middle = draw(st.lists(st.one_of(packs, numbers.map(lambda n: f"g{n}"), st.just("x")), min_size=1, max_size=5))
    first_g = next((i for i, p in enumerate(middle) if p[0] == "g"), None)
    middle = [p for i, p in enumerate(middle) if p[0] != "g" or i == first_g]  # a step generates one section
    parts = [
        p for i, p in enumerate(middle) if i == 0 or not (p == "x" == middle[i - 1] or p[0] == "f" == middle[i - 1][0])
    ]
    if parts[0][0] == "f" and draw(st.booleans()):
        parts.insert(0, draw(st.sampled_from(["td", "ta", "tc"])))
    if parts[-1][0] == "f" and draw(st.booleans()):
        parts.append(draw(st.sampled_from(["td", "ta", "tc"])))
    return "_".join(parts) + draw(st.sampled_from(["", "+D", "+d"]))


@settings(max_examples=300, deadline=None)
@given(schedules(), st.integers(0, 5000))
def test_fuzz_valid_names_round_trip_and_count(name, history):
    schedule = parse_schedule(name)
    assert str(schedule) == name
    grid = SectionGrid(schedule.generate_frames or 4, 12, 20)
    n = schedule.context_length(grid, history)
    assert n >= 0 and schedule.context_length(grid, history + 1) >= n


def test_schedule_is_plain_data():
    s = parse_schedule("td_f2k1_g3")
    assert isinstance(s, Schedule) and hash(s) == hash(parse_schedule("td_f2k1_g3"))


@pytest.mark.parametrize(
    "table_name, one_g",
    [
        ("f1k1_x_g9_f1k1f4k2f1k1_g9+D", "f1k1_x_g9_f1k1f4k2f1k1+D"),
        ("f1k1_x_g1_f1k1f2k2f1k1_g9+D", "f1k1_x_g1_f1k1f2k2f1k1+D"),
    ],
)
def test_table_1_two_g_names_are_refused_with_their_one_g_form(table_name, one_g):
    """Read as written, the middle pack would sit inside an 18-frame section: counted, never packed. The
    sentence offers the one-g name, which packs those frames after one section, and that name is a preset."""
    with pytest.raises(ValueError) as err:
        parse_schedule(table_name)
    assert f"write '{one_g}'" in str(err.value) and str(err.value).count(".") >= 1
    schedule = parse_schedule(one_g)
    assert one_g in PAPER_SCHEDULES and schedule.sampling == "inverted" and schedule.discrete == "D"
    assert schedule.generate_frames == int(one_g.split("_g")[1][0])
    assert [s.frames for s in schedule.after.near] == [1, int(one_g.split("f1k1f")[1].split("k")[0]), 1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(packs, numbers.map(lambda n: f"g{n}"), st.just("x")), min_size=2, max_size=6))
@example(["g1", "f1k1", "g1", "f1k1"])  # its one-g form has two packs in a row: no name can be offered
def test_fuzz_names_with_two_g_parts_get_one_sentence(parts):
    name = "_".join(parts)
    if sum(p[0] == "g" for p in parts) < 2:
        return
    with pytest.raises(ValueError, match=r"g parts|expected") as err:
        parse_schedule(name)
    text = str(err.value)
    assert "\n" not in text and text.endswith(".")
    if "g parts" in text and "write '" in text:  # a one-g form is offered only when it parses
        offered = text.split("write '")[1].split("'")[0]
        assert parse_schedule(offered).generate_frames == int(next(p for p in parts if p[0] == "g")[1:])
    elif "g parts" in text:  # its one-g form breaks another rule (e.g. two packs in a row): no name is offered
        assert "keep only the first" in text
