"""How many 32-bit draws each random op takes from PyTorch's CPU generator.

Knowing the count of every recorded random op places each one on its generator's stream without
drawing (``_mt19937.advance``), so the context can leave the generator where eager leaves it and
replay can skip the draws nobody needs. The rules below were measured on torch 2.13 (CPU); they
depend on PyTorch's kernels, so each is checked once per process against the installed torch
with tiny tensors (:func:`holds`) before it is trusted. An op without a rule, or whose rule
does not hold, returns None: its place on the stream is then found by running it (exact, slower).

[Note: normal_ and its cache]
``normal_`` on a contiguous tensor of 16 or more elements turns uniform draws into normals in
blocks of 16 and ignores the generator's cached normal. Smaller or strided tensors take a path
that reads and writes that cache (part of the generator state): no count is given for them, so
they run for real, from their exact position, and the cache is right afterwards.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import _mt19937
from ._session import real_execution

aten = torch.ops.aten

# Beyond this many standard deviations, no normal sample can fall: the Box-Muller radius is
# sqrt(-2 ln u) with u >= 2^-53 (double path; 2^-24 for float, 5.77), at most 8.58.
_NORMAL_REACH = 8.6


def _word_size(dtype: torch.dtype) -> int:
    return 2 if dtype in (torch.float64, torch.int64) else 1


def _uniform(n: int, dtype: torch.dtype, _: dict[str, Any]) -> int:
    return n * (2 if dtype == torch.float64 else 1)


def _normal(n: int, dtype: torch.dtype, _: dict[str, Any]) -> int:
    blocks = -(-n // 16)
    if dtype in (torch.float16, torch.bfloat16):
        return 16 * blocks
    tail = 16 if n % 16 else 0
    return (n + tail) * (2 if dtype == torch.float64 else 1)


def _random(n: int, dtype: torch.dtype, _: dict[str, Any]) -> int:
    return n * _word_size(dtype)  # random_() over the dtype's whole range


def _bounds(bound: dict[str, Any]) -> tuple[int, int]:
    """``[low, high)`` of randint / random_(from, to) (``count`` returns early without ``to``)."""
    low, high = bound.get("from", bound.get("low", 0)), bound.get("to", bound.get("high"))
    assert high is not None
    return int(low or 0), int(high)


def _random_range(n: int, dtype: torch.dtype, bound: dict[str, Any]) -> int:
    low, high = _bounds(bound)
    if dtype.is_floating_point:
        low, high = _float_bounds(low, high, dtype)
    return n * (2 if high - low >= 2**28 else 1)


# Significand bits of each floating dtype (c10's Half and BFloat16 are built from a float, so an
# integer cast to them is rounded to float32 first).
_DIGITS = {torch.float64: 53, torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}


def _round_to(x: int, digits: int) -> int:
    """``x`` rounded to ``digits`` significant bits, to nearest, ties to even (a C++ cast)."""
    a = abs(x)
    shift = a.bit_length() - digits
    if shift <= 0:
        return x
    q, r = divmod(a, 1 << shift)
    half = 1 << (shift - 1)
    if r > half or (r == half and q & 1):
        q += 1
    return (q << shift) if x > 0 else -(q << shift)


def _cast(x: int, dtype: torch.dtype) -> int:
    """``static_cast<int64_t>(static_cast<scalar_t>(x))`` for a floating ``scalar_t``."""
    digits = _DIGITS[dtype]
    if digits < 24:
        x = _round_to(x, 24)
    return _round_to(x, digits)


def _float_bounds(low: int, high: int, dtype: torch.dtype) -> tuple[int, int]:
    """[low, high) as ``random_(from, to)`` narrows it for a floating dtype (ATen's
    ``update_from`` and ``update_to``: the bounds move inward until the dtype holds them), which
    decides whether the range takes one draw per element or two."""
    digits = _DIGITS.get(dtype)
    if digits is None:
        return low, high
    low_plus_1 = _cast(low + 1, dtype)
    if low_plus_1 < low:
        low = low_plus_1 + (1 << (abs(low + 1).bit_length() - 1 - digits + 1))
    high_minus_1 = _cast(high - 1, dtype)
    if high_minus_1 >= high:
        high = high_minus_1 - (1 << (abs(high - 1).bit_length() - 1 - digits + 1))
    return low, high


def _randperm(n: int, dtype: torch.dtype, bound: dict[str, Any]) -> int:
    return max(int(bound["n"]) - 1, 0)


def _two_per_element(n: int, dtype: torch.dtype, _: dict[str, Any]) -> int:
    return 2 * n


def _bernoulli_tensor(n: int, p_dtype: torch.dtype, _: dict[str, Any]) -> int:
    return n * (2 if p_dtype == torch.float64 else 1)  # one draw per probability read


_Count = Callable[[int, torch.dtype, dict[str, Any]], int]


@dataclass(frozen=True, eq=False)
class Rule:
    """The draws of one kernel, and how to check them: ``probe(tensor, generator)`` runs it."""

    draws: _Count
    probe: Callable[[torch.Tensor, torch.Generator], object]
    probe_args: dict[str, Any]
    block_path: bool = False  # holds only for contiguous targets of 16+ elements


UNIFORM = Rule(_uniform, lambda t, g: t.uniform_(generator=g), {})
NORMAL = Rule(_normal, lambda t, g: t.normal_(generator=g), {}, block_path=True)
RANDOM = Rule(_random, lambda t, g: t.random_(generator=g), {})
RANDOM_RANGE = Rule(_random_range, lambda t, g: t.random_(0, 100, generator=g), {"to": 100})
# Checks the range rule where it matters: two draws per element from 2^28 on, and the bounds a
# floating dtype narrows (float32 and bfloat16 narrow [0, 2^28) below 2^28: one draw).
RANDOM_WIDE_RANGE = Rule(
    _random_range, lambda t, g: t.random_(0, 2**28, generator=g), {"to": 2**28}
)
RANDPERM = Rule(_randperm, lambda t, g: torch.randperm(t.numel(), generator=g), {})
BERNOULLI = Rule(_two_per_element, lambda t, g: t.bernoulli_(0.5, generator=g), {})
BERNOULLI_P = Rule(
    _bernoulli_tensor, lambda t, g: t.bernoulli_(torch.full_like(t, 0.5), generator=g), {}
)
EXPONENTIAL = Rule(_two_per_element, lambda t, g: t.exponential_(generator=g), {})

_RULES: dict[Any, Rule] = {
    aten.uniform_.default: UNIFORM,
    aten.rand.default: UNIFORM,
    aten.rand.generator: UNIFORM,
    aten.rand_like.default: UNIFORM,
    aten.rand_like.generator: UNIFORM,
    aten.normal_.default: NORMAL,
    aten.randn.default: NORMAL,
    aten.randn.generator: NORMAL,
    aten.randn_like.default: NORMAL,
    aten.randn_like.generator: NORMAL,
    aten.normal.float_float: NORMAL,
    aten.random_.default: RANDOM,
    aten.random_.to: RANDOM_RANGE,
    getattr(aten.random_, "from"): RANDOM_RANGE,
    aten.randint.default: RANDOM_RANGE,
    aten.randint.low: RANDOM_RANGE,
    aten.randint.generator: RANDOM_RANGE,
    aten.randint.low_generator: RANDOM_RANGE,
    aten.randint_like.default: RANDOM_RANGE,
    aten.randint_like.generator: RANDOM_RANGE,
    aten.randint_like.low_dtype: RANDOM_RANGE,
    aten.randint_like.low_generator_dtype: RANDOM_RANGE,
    aten.randperm.default: RANDPERM,
    aten.randperm.generator: RANDPERM,
    aten.bernoulli_.float: BERNOULLI,
    aten.bernoulli_.Tensor: BERNOULLI_P,
    aten.bernoulli.default: BERNOULLI_P,
    aten.exponential_.default: EXPONENTIAL,
}


# By id: OpOverload hashes in Python, and every recorded random op asks.
_RULES_BY_ID = {id(op): rule for op, rule in _RULES.items()}


def count(op: Any, target: torch.Tensor, bound: dict[str, Any], device: torch.device) -> int | None:
    """32-bit draws ``op`` takes from a CPU generator to fill ``target`` (the meta tensor of its
    output or of the tensor it writes, on ``device``), or None when that is not known without
    running it."""
    rule = _RULES_BY_ID.get(id(op)) or _RULES.get(op)
    if rule is None or device.type != "cpu":
        return None
    n = target.numel()
    if rule.block_path and (n < 16 or not target.is_contiguous()):
        return None  # see [Note: normal_ and its cache]
    if rule.draws is _random_range and bound.get("to", bound.get("high")) is None:
        return None  # random_(from, None): up to the dtype's limit, not checked
    dtype = target.dtype
    if rule is RANDOM_RANGE and not _narrow_range(bound) and not holds(RANDOM_WIDE_RANGE, dtype):
        return None
    if rule is BERNOULLI_P:  # draws follow the probabilities' dtype
        p = bound.get("p", bound.get("self"))
        dtype = p.dtype if isinstance(p, torch.Tensor) else dtype
    if not holds(rule, dtype):
        return None
    return rule.draws(n, dtype, bound)


def count_library_call(
    name: str, target: torch.Tensor, call: dict[str, Any], device: torch.device
) -> int | None:
    """Draws of a recorded ``torch.nn.init`` call (see ``_deferred``)."""
    if device.type != "cpu" or not target.is_contiguous() or target.numel() < 16:
        return None
    dtype, n = target.dtype, target.numel()
    if not holds(NORMAL, dtype):
        return None
    if name == "torch.nn.init.orthogonal_":
        return _normal(n, dtype, {})  # one normal_ on a fresh (rows, cols) tensor, then QR
    if plain_normal(name, call) is not None:
        return _normal(n, dtype, {})
    return None


def plain_normal(name: str, call: dict[str, Any]) -> tuple[float, float] | None:
    """``(mean, std)`` when a recorded ``trunc_normal_`` call is exactly ``normal_(mean, std)``:
    one round, since no sample can fall outside ``[a, b]``. Otherwise (another call, or bounds
    normal_ can reach) None: the number of rounds depends on the values."""
    if name != "torch.nn.init.trunc_normal_":
        return None
    mean, std, a, b = (float(call[k]) for k in ("mean", "std", "a", "b"))
    if not (std > 0 and math.isfinite(mean)):
        return None
    if a <= mean - _NORMAL_REACH * std and b >= mean + _NORMAL_REACH * std:
        return mean, std
    return None


def _narrow_range(bound: dict[str, Any]) -> bool:
    """Whether a range is below 2^28 (one draw per element, whatever the dtype narrows), so the
    wide-range probe is not needed."""
    low, high = _bounds(bound)
    return high - low < 2**28


# --- checking the rules against the installed torch ------------------------------------------


@functools.cache
def holds(rule: Rule, dtype: torch.dtype) -> bool:
    """Whether ``rule`` gives the draws the installed torch takes, at a few sizes."""
    gen = torch.Generator()
    # Often first asked while model code records (under torch.device("meta") even): run real ops.
    # The wide-range probe warns that float32 cannot hold every integer up to 2^28: the user's
    # own op gives that warning, not the probe.
    with real_execution(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in (16, 37, 1000):
            gen.manual_seed(n)
            target = torch.empty(n, dtype=dtype, device="cpu")
            start = gen.get_state()
            try:
                rule.probe(target, gen)
            except (RuntimeError, TypeError, ValueError, NotImplementedError):
                return False  # the kernel does not take this dtype: no rule
            expected = _mt19937.advance(start, rule.draws(n, dtype, {**rule.probe_args, "n": n}))
            if not torch.equal(expected, gen.get_state()):
                return False
    return True
