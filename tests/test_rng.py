"""Random numbers: the jump-ahead, the draw-count rules, and where generators stand after a
lazy build (where eager construction leaves them)."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same, build_pair
from models import PATTERNS, RandomOrder
from torch import nn

import dormant._draws as draws
import dormant._mt19937 as mt19937
from dormant import LazyInitContext, materialize

# --- the jump ---------------------------------------------------------------------------------


def _drawn(start_draws: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(state before, state after n real draws) of a generator that already drew some."""
    g = torch.Generator().manual_seed(1234)
    torch.empty(start_draws).uniform_(generator=g)
    before = g.get_state()
    left = n
    while left:  # float32 uniform_ takes one 32-bit draw per element
        chunk = min(left, 1 << 24)
        torch.empty(chunk).uniform_(generator=g)
        left -= chunk
    return before, g.get_state()


@pytest.mark.parametrize("already", [0, 1, 623, 624, 1000])
@pytest.mark.parametrize("n", [0, 1, 623, 624, 625, 100_000, 262_144, 1_000_003, 50_000_017])
def test_advance_equals_real_drawing(already: int, n: int) -> None:
    before, after = _drawn(already, n)
    assert torch.equal(mt19937.advance(before, n), after)


def test_advance_composes_for_huge_counts() -> None:
    state = torch.Generator().manual_seed(7).get_state()
    a, b = 10**15 + 3, 2**40 + 123_457
    once = mt19937.advance(state, a + b)
    twice = mt19937.advance(mt19937.advance(state, a), b)
    assert torch.equal(once, twice)
    with pytest.raises(ValueError, match="cannot move a generator back"):
        mt19937.advance(state, -1)


@pytest.mark.parametrize("j", [624, 625, 20_000, 391_001, 1_000_003, 5 * 624 * 1111 + 17])
def test_block_ahead_equals_the_drawn_block(j: int) -> None:
    # The words j .. j+623 as numpy's C generator draws them, untempered.
    words, _ = mt19937.read_state(torch.Generator().manual_seed(11).get_state())
    bitgen = mt19937.numpy_generator(words, mt19937.N)
    bitgen.random_raw(j - mt19937.N, output=False)
    drawn = mt19937.untemper(bitgen.random_raw(mt19937.N).astype(np.uint32))
    assert np.array_equal(mt19937.block_ahead(words, j), drawn)


def test_jumps_in_threads_at_once_equal_drawing() -> None:
    # Replay threads jump at the same time: each has its own scratch and numpy generator.
    before, after = _drawn(5, 3_000_017)
    results: list[bool] = []

    def jump() -> None:
        results.extend(torch.equal(mt19937.advance(before, 3_000_017), after) for _ in range(5))
        results.append(torch.equal(mt19937.advance(before, 1000), _drawn(5, 1000)[1]))

    threads = [threading.Thread(target=jump) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 18


def test_temper_is_the_generators_output_transform() -> None:
    # The grouped jump XORs tempered words: tempering is mt19937's, untempering its inverse.
    words, _ = mt19937.read_state(torch.Generator().manual_seed(3).get_state())
    bitgen = mt19937.numpy_generator(words, mt19937.N)
    outputs = bitgen.random_raw(mt19937.N).astype(np.uint32)  # regenerates once: the next block
    following = np.asarray(bitgen.state["state"]["key"], np.uint32)
    assert np.array_equal(mt19937.temper(following), outputs)
    assert np.array_equal(mt19937.untemper(outputs), following)


def test_advance_keeps_the_cached_normal() -> None:
    g = torch.Generator().manual_seed(0)
    torch.empty(3).normal_(generator=g)  # the small path leaves a cached normal sample
    state = g.get_state()
    moved = mt19937.advance(state, 10**6)
    assert torch.equal(moved[5016:], state[5016:])


def test_characteristic_polynomial_is_mt19937s() -> None:
    # Berlekamp-Massey on one output bit: the shortest recurrence is the polynomial we embed.
    bits = (np.random.MT19937(99).random_raw(2 * mt19937.DEGREE) >> 7) & 1
    c, b, length, m = 1, 1, 0, 1
    window = 0
    for k, s in enumerate(bits.tolist()):
        window = (window << 1) | s
        if (c & window).bit_count() & 1:
            if 2 * length <= k:
                c, b, length, m = c ^ (b << m), c, k + 1 - length, 1
            else:
                c, m = c ^ (b << m), m + 1
        else:
            m += 1
    exponents = sorted(length - i for i in range(length + 1) if c >> i & 1)
    assert tuple(exponents) == mt19937.CHARPOLY


# --- draw counts --------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SIZES = [1, 15, 16, 17, 48, 1001]


def _count_matches(op, shape: tuple[int, ...], dtype: torch.dtype, run) -> bool | None:
    """Record ``run`` lazily: is the counted position where eager's generator stands?"""
    g = torch.Generator().manual_seed(5)
    with LazyInitContext():
        t = run(torch.empty(shape, dtype=dtype), g)
    counted = t._lazy_storage.writers[-1].rng.draws
    if counted is None:
        return None
    eager = torch.Generator().manual_seed(5)
    run(torch.empty(shape, dtype=dtype), eager)
    fresh = torch.Generator().manual_seed(5).get_state()
    return torch.equal(mt19937.advance(fresh, counted), eager.get_state())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(
    "name",
    ["uniform_", "normal_", "normal_ strided", "bernoulli_", "exponential_", "randint"],
)
def test_counted_draws_equal_eager(name: str, n: int, dtype: torch.dtype) -> None:
    runs = {
        "uniform_": lambda t, g: t.uniform_(-2, 3, generator=g),
        "normal_": lambda t, g: t.normal_(0, 0.5, generator=g),
        "normal_ strided": lambda t, g: t.t().normal_(generator=g),
        "bernoulli_": lambda t, g: t.bernoulli_(0.3, generator=g),
        "exponential_": lambda t, g: t.exponential_(generator=g),
        "randint": lambda t, g: t.random_(
            0, 2**30 if t.dtype == torch.float64 else 50, generator=g
        ),
    }
    shape = (n, 2) if name == "normal_ strided" else (n,)
    matches = _count_matches(name, shape, dtype, runs[name])
    if name.startswith("normal_") and (n < 16 or name.endswith("strided")):
        assert matches is None  # the cached-sample path: run for real, never guessed
    else:
        assert matches is True


@pytest.mark.filterwarnings("ignore:to - 1 is out of bounds")
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64], ids=repr
)
@pytest.mark.parametrize("high", [2**28 - 1, 2**28, 2**28 + 1, 2**28 + 20, 2**28 + 2**19, 2**30])
@pytest.mark.parametrize("low", [0, -7])
def test_wide_random_ranges_count_the_bounds_a_float_dtype_narrows(
    low: int, high: int, dtype: torch.dtype
) -> None:
    # random_(0, 2**28) on float32 narrows `to` to 2**28 - 15 (2**28 - 1 is no float32): one
    # draw per element, not the two a range of 2**28 takes.
    def run(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return t.random_(low, high, generator=g)

    assert _count_matches("random_", (17,), dtype, run) is True


def test_every_rule_holds_on_this_torch() -> None:
    rules = [draws.UNIFORM, draws.NORMAL, draws.RANDOM, draws.RANDOM_RANGE, draws.RANDPERM]
    rules += [draws.BERNOULLI, draws.BERNOULLI_P, draws.EXPONENTIAL, draws.RANDOM_WIDE_RANGE]
    for rule in rules:
        assert draws.holds(rule, torch.float32), rule


def test_rules_are_checked_on_real_tensors_even_under_a_meta_device() -> None:
    # transformers builds under torch.device("meta"): a probe there would draw nothing.
    draws.holds.cache_clear()
    with torch.device("meta"):
        assert draws.holds(draws.NORMAL, torch.float16)


def test_a_rule_that_does_not_hold_is_not_used() -> None:
    wrong = draws.Rule(lambda n, dtype, bound: n + 1, draws.UNIFORM.probe, {})
    assert not draws.holds(wrong, torch.float32)


def test_trunc_normal_with_unreachable_bounds_costs_one_round() -> None:
    t = torch.empty(64, 64)
    call = {"mean": 0.0, "std": 0.02, "a": -2.0, "b": 2.0}
    cpu = torch.device("cpu")
    assert draws.count_library_call("torch.nn.init.trunc_normal_", t, call, cpu) == 64 * 64
    tight = {"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0}
    assert draws.count_library_call("torch.nn.init.trunc_normal_", t, tight, cpu) is None


# --- where generators stand after the context -------------------------------------------------


@pytest.mark.parametrize("ctor", PATTERNS, ids=lambda c: c.__name__)
def test_generator_stands_where_eager_leaves_it(ctor: type[nn.Module]) -> None:
    build_pair(ctor, 3)  # asserts the generators' states as well as the values


def test_two_contexts_in_a_row_continue_one_stream() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(32, 32), nn.Linear(32, 32)
    torch.manual_seed(0)
    with LazyInitContext():
        la = nn.Linear(32, 32)
    with LazyInitContext():
        lb = nn.Linear(32, 32)
    materialize(lb)
    materialize(la)
    assert_same(a, la)
    assert_same(b, lb)
    assert not torch.equal(la.weight, lb.weight)


def test_manual_seed_inside_model_code_is_where_eager_leaves_it() -> None:
    class Seeds(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            torch.manual_seed(42)
            self.b = nn.Linear(8, 8)

    torch.manual_seed(0)
    eager = Seeds()
    expected = torch.get_rng_state()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = Seeds()
    assert torch.equal(torch.get_rng_state(), expected)
    materialize(lazy)
    assert_same(eager, lazy)


def test_exception_leaves_the_generator_where_it_was() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            raise ValueError("bad config")

    torch.manual_seed(0)
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match="bad config"), LazyInitContext():
        Broken()
    assert torch.equal(torch.get_rng_state(), before)


def test_explicit_generators_stand_where_eager_leaves_them() -> None:
    def build(g: torch.Generator) -> nn.Module:
        m = nn.Linear(40, 40)
        nn.init.normal_(m.weight, generator=g)
        nn.init.uniform_(m.bias, generator=g)
        return m

    g = torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    eager = build(g)
    eager_states = (g.get_state(), torch.get_rng_state())
    g = torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = build(g)
    assert torch.equal(g.get_state(), eager_states[0])
    assert torch.equal(torch.get_rng_state(), eager_states[1])
    materialize(lazy)
    assert_same(eager, lazy)


def test_random_init_after_the_context_draws_where_eager_does() -> None:
    # peft-style: an adapter made after the model, then an init on a lazy weight.
    def build() -> nn.Module:
        m = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
        return m

    def adapt(m: nn.Module) -> None:
        m.lora = nn.Linear(16, 4, bias=False)
        nn.init.kaiming_uniform_(m[1].weight, a=5**0.5)

    torch.manual_seed(0)
    eager = build()
    adapt(eager)
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = build()
    adapt(lazy)  # lora is real; the init of m[1] is recorded
    assert torch.equal(lazy.lora.weight, eager.lora.weight)
    materialize(lazy)
    assert_same(eager, lazy)


def test_randn_like_of_a_real_template_is_recorded_in_order() -> None:
    template = torch.zeros(5, 5)

    class UsesTemplate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(5, 5)
            self.register_buffer("noise", torch.randn_like(template))
            self.b = nn.Linear(5, 5)

    eager, lazy = build_pair(UsesTemplate)
    assert_same(eager, lazy)


def test_real_random_op_inside_the_context_draws_from_eagers_position() -> None:
    real = torch.empty(100)

    def build() -> nn.Module:
        m = nn.Linear(10, 10)
        real.normal_()  # a real tensor, drawn for real inside the context
        m.extra = nn.Linear(10, 10)
        return m

    torch.manual_seed(0)
    eager = build()
    eager_real, eager_state = real.clone(), torch.get_rng_state()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = build()
    assert torch.equal(real, eager_real)
    assert torch.equal(torch.get_rng_state(), eager_state)
    materialize(lazy)
    assert_same(eager, lazy)


def test_training_with_dropout_after_a_lazy_build_equals_eager() -> None:
    import transformers

    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2,
    )  # fmt: skip

    def train(model: nn.Module) -> list[float]:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(3):
            ids = torch.randint(0, 100, (4, 12))
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses

    torch.manual_seed(0)
    eager_losses = train(transformers.BertForMaskedLM(config))
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = transformers.BertForMaskedLM(config)
    materialize(lazy)
    assert train(lazy) == eager_losses


def test_materialize_never_touches_the_users_generators() -> None:
    torch.manual_seed(0)
    eager = RandomOrder()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = RandomOrder()
    stop = threading.Event()

    def draw() -> None:  # another thread uses the global generator all along
        while not stop.is_set():
            torch.rand(64)

    worker = threading.Thread(target=draw)
    worker.start()
    try:
        materialize(lazy)
    finally:
        stop.set()
        worker.join()
    assert_same(eager, lazy)


def test_generators_are_not_kept_alive() -> None:
    g = torch.Generator().manual_seed(0)
    ref = weakref.ref(g)
    with LazyInitContext():
        m = nn.Linear(8, 8)
        nn.init.normal_(m.weight, generator=g)
    del g
    gc.collect()
    assert ref() is None
    materialize(m)


def test_dropout_in_model_code_during_the_build() -> None:
    class DropsAtInit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mask", F.dropout(torch.ones(40), 0.5, training=True))
            self.a = nn.Linear(4, 4)

    eager, lazy = build_pair(DropsAtInit)
    assert_same(eager, lazy)


class ReseededLayers(nn.Module):
    """Model code that seeds before each layer, with the seed the generator already holds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(64, 64)
        torch.manual_seed(0)
        self.b = nn.Linear(64, 64)
        self.c = nn.Parameter(torch.randn(100))
        torch.manual_seed(0)
        self.d = nn.Parameter(torch.randn(100))


def test_reseeding_to_the_state_already_held_is_seen() -> None:
    eager, lazy = build_pair(ReseededLayers)  # asserts the generator ends where eager's does
    assert_same(eager, lazy)
    assert torch.equal(lazy.a.weight, lazy.b.weight)  # the same seed, the same draws


def test_an_exception_gives_back_the_state_the_marker_stands_for() -> None:
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="model code failed"), LazyInitContext():
        nn.Linear(8, 8)
        raise RuntimeError("model code failed")
    assert torch.equal(torch.get_rng_state(), before)
