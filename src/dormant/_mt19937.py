"""Advancing PyTorch's CPU generator by any number of draws without drawing.

[Note: mt19937 jump-ahead]
PyTorch's CPU generator is mt19937. Its state is 624 32-bit words (one *block* of the untempered
word sequence x_0, x_1, ... with x_k = x_{k-227} ^ twist(x_{k-624}, x_{k-623})) and a position
in that block. Every bit lane of the sequence obeys one linear recurrence over GF(2) whose
characteristic polynomial P has degree 19937 (135 terms, :data:`CHARPOLY`). Hence for any J,
with q = x^J mod P, x_{J+j} = XOR over {i : q_i = 1} of x_{i+j}: the block J words ahead is a
XOR of shifted windows of the first 19937 + 624 words, whatever J is. q is found in log2(J)
steps (:func:`x_pow_mod`); the whole jump takes about a millisecond for any J up to 2^64. Short
jumps simply draw (numpy's C MT19937, a few ns per word).

The generator state that ``torch.Generator.get_state()`` returns (5056 bytes, see
:class:`_Layout`) also holds the seed and the cached normal samples; a jump keeps those.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import threading
from collections import Counter

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

N = 624  # words per block
DEGREE = 19937
# Exponents of P, the characteristic polynomial of mt19937 over GF(2) (tests/test_rng.py derives
# them again from the generator's output with Berlekamp-Massey).
CHARPOLY = (
    0, 1189, 1416, 1585, 1643, 1870, 2493, 2773, 3000, 3227, 3454, 3681, 3908, 4135, 4362,
    4753, 5661, 6337, 6569, 7129, 7477, 7525, 7583, 7752, 7979, 8206, 9505, 9901, 9969, 10128,
    10693, 10761, 10920, 11089, 11147, 11157, 11215, 11321, 11374, 11384, 11485, 11611, 11712,
    11717, 11838, 11881, 11944, 11997, 12277, 12335, 12393, 12504, 12509, 12620, 12673, 12731,
    12736, 12789, 12905, 12958, 12963, 13137, 13185, 13190, 13243, 13301, 13412, 13528, 13533,
    13639, 13697, 13760, 13813, 13866, 14093, 14151, 14209, 14320, 14325, 14436, 14547, 14552,
    14605, 14721, 14774, 14779, 14953, 15001, 15006, 15059, 15117, 15228, 15344, 15349, 15455,
    15513, 15576, 15629, 15682, 15909, 15967, 16025, 16136, 16141, 16252, 16363, 16368, 16421,
    16537, 16590, 16595, 16817, 16822, 16875, 16933, 17044, 17160, 17271, 17329, 17445, 17498,
    17725, 17783, 17841, 17952, 18068, 18179, 18237, 18406, 18633, 18691, 18860, 19087, 19314,
    19937,
)  # fmt: skip
# Below this many draws, drawing is faster than jumping: a draw costs nanoseconds a word, a
# jump about a millisecond ([Note: grouped jump]; more to a distance not met before): they
# break even near 380K draws (figures: benchmarks/jump_cost.py).
DRAW_BELOW = 3 << 17


class _Layout:
    """Byte offsets in the CPU generator state (aten's ``CPUGeneratorImplState``)."""

    SIZE = 5056
    LEFT = 8  # int32: words left in the block + 1 (1: the next draw regenerates)
    NEXT = 16  # uint64: index of the next word in the block
    WORDS = 24  # 624 x uint64, each holding one 32-bit word


def read_state(state: torch.Tensor) -> tuple[np.ndarray, int]:
    """(block, pos): pos in 1..624 is the index of the next word; 624 means regenerate first."""
    raw = state.numpy()
    if raw.size != _Layout.SIZE:
        raise ValueError(f"not a CPU generator state: {raw.size} bytes, expected {_Layout.SIZE}")
    left = int(raw[_Layout.LEFT : _Layout.LEFT + 4].view(np.int32)[0])
    nxt = int(raw[_Layout.NEXT : _Layout.NEXT + 8].view(np.uint64)[0])
    words = raw[_Layout.WORDS : _Layout.WORDS + 8 * N].view(np.uint64).astype(np.uint32)
    return words, (N if left == 1 else nxt)


def write_state(state: torch.Tensor, words: np.ndarray, pos: int) -> torch.Tensor:
    raw = state.numpy().copy()
    raw[_Layout.LEFT : _Layout.LEFT + 4] = np.array([N + 1 - pos], np.int32).view(np.uint8)
    raw[_Layout.NEXT : _Layout.NEXT + 8] = np.array([pos], np.uint64).view(np.uint8)
    raw[_Layout.WORDS : _Layout.WORDS + 8 * N] = words.astype(np.uint64).view(np.uint8)
    return torch.from_numpy(raw)


class _Scratch(threading.local):
    """Per-thread buffers of a jump, made once and reused (see [Note: grouped jump]): a fresh
    allocation of this size is a fresh mapping per call, whose page faults cost more than the
    work, and the pages would add to the peak of whatever the thread does next."""

    def __init__(self) -> None:
        self.bitgen = np.random.MT19937(0)  # making one costs more than setting its state
        self.key = _c_state(self.bitgen)
        self.table = np.zeros((1 << _GROUP, _WIDTH), np.uint32)  # row 0 stays zero
        self.windows = sliding_window_view(self.table.reshape(-1), N)
        self.tempered = np.empty(_WIDTH + _GROUP, np.uint32)  # x_{1+G*g0} on, one chunk's worth


def _c_state(bitgen: np.random.MT19937) -> np.ndarray | None:
    """numpy's C state of ``bitgen`` (624 key words, then the position) as a writable array, or
    None where its layout is not that one: reading and writing it skips the ``state`` property,
    whose dict costs more than a short draw."""
    address = bitgen.ctypes.state_address
    view = np.ctypeslib.as_array((ctypes.c_uint32 * (N + 1)).from_address(address))
    probe = np.arange(1, N + 1, dtype=np.uint32)
    bitgen.state = {"bit_generator": "MT19937", "state": {"key": probe, "pos": 7}}
    if not (np.array_equal(view[:N], probe) and int(view[N]) == 7):
        return None
    return view


_SCRATCH: _Scratch  # made below, once the jump's sizes are known


def numpy_generator(words: np.ndarray, pos: int) -> np.random.MT19937:
    """This thread's numpy generator, set to (block, pos): numpy's MT19937 keeps the same pair as
    torch and regenerates at pos == 624, as torch does."""
    bitgen, key = _SCRATCH.bitgen, _SCRATCH.key
    if key is None:
        bitgen.state = {"bit_generator": "MT19937", "state": {"key": words, "pos": pos}}
    else:
        key[:N] = words
        key[N] = pos
    return bitgen


def _numpy_state(bitgen: np.random.MT19937) -> tuple[np.ndarray, int]:
    key = _SCRATCH.key
    if key is None:
        inner = bitgen.state["state"]
        return np.asarray(inner["key"], np.uint32), int(inner["pos"])
    return key[:N].copy(), int(key[N])


def untemper(y: np.ndarray) -> np.ndarray:
    """The untempered words behind mt19937 outputs ``y`` (tempering is invertible)."""
    y = y ^ (y >> np.uint32(18))
    y = y ^ ((y << np.uint32(15)) & np.uint32(0xEFC60000))
    x = y
    for _ in range(4):  # y ^= (y << 7) & mask, undone 7 bits at a time
        x = y ^ ((x << np.uint32(7)) & np.uint32(0x9D2C5680))
    y = x
    for _ in range(2):  # y ^= y >> 11, undone 11 bits at a time
        x = y ^ (x >> np.uint32(11))
    return x


_POLY_MASK = (1 << DEGREE) - 1
# The reversed polynomial B(x) = x^DEGREE P(1/x), as exponents (B(0) = 1).
_REVERSED = tuple(sorted(DEGREE - e for e in CHARPOLY))
_SPREAD = np.array([sum(((b >> k) & 1) << (2 * k) for k in range(8)) for b in range(256)], "<u2")


def _spread(v: int) -> int:
    """v(x) -> v(x^2): over GF(2) this is squaring, bit k moves to bit 2k."""
    as_bytes = np.frombuffer(v.to_bytes(DEGREE // 8 + 1, "little"), np.uint8)
    return int.from_bytes(_SPREAD[as_bytes].tobytes(), "little")


def _correlate(v: int) -> int:
    """(w_j) -> (XOR_i B_i w_{i+j}), truncated to DEGREE coefficients."""
    bases: dict[tuple[int, ...], int] = {(): v}
    acc = 0
    for steps, exponents in _correlate_plan():
        base = bases.get(steps)
        if base is None:  # one more step on a base made before (plans list prefixes first)
            base = bases[steps[:-1]] ^ (bases[steps[:-1]] >> steps[-1])
            bases[steps] = base
        for e in exponents:
            acc ^= base >> e
    return acc & _POLY_MASK


_Plan = list[tuple[tuple[int, ...], tuple[int, ...]]]


@functools.cache
def _correlate_plan() -> _Plan:
    """B's 135 exponents as (steps, exponents) groups, so that a correlation shifts ~40 times
    instead of 135 (x^J mod P about 2x faster): with ``base = v`` XOR ``base >> d`` for each
    step d in turn, ``base >> e`` stands for every e + (a subset sum of the steps). mt19937's
    polynomial is full of pairs at distance 227 and its multiples (the recurrence reads the
    word 227 ahead)."""

    def pairs(exps: list[int], d: int) -> tuple[list[int], list[int]]:
        left, firsts, used = set(exps), [], set[int]()
        for e in exps:
            if e not in used and e + d in left and e + d not in used:
                firsts.append(e)
                used.update((e, e + d))
        return firsts, [e for e in exps if e not in used]

    def split(exps: list[int], steps: tuple[int, ...], depth: int) -> _Plan:
        gaps = Counter(b - a for a in exps for b in exps if b > a)
        options = [(*pairs(exps, d), d) for d, _ in gaps.most_common(30)]
        firsts, rest, d = max(options, key=lambda o: len(o[0]), default=([], exps, 0))
        if depth == 0 or len(firsts) < 3:
            return [(steps, tuple(exps))]
        return split(firsts, (*steps, d), depth - 1) + split(rest, steps, depth - 1)

    plan = sorted(split(list(_REVERSED), (), 3), key=lambda group: len(group[0]))
    covered = sorted(
        e + sum(d for d, bit in zip(steps, mask, strict=True) if bit)
        for steps, exps in plan
        for e in exps
        for mask in itertools.product((0, 1), repeat=len(steps))
    )
    assert covered == list(_REVERSED), "correlation plan does not cover B exactly once"
    return plan


@functools.lru_cache(maxsize=64)
def x_pow_mod(j: int) -> int:
    """x^j mod P as an int (bit i: coefficient of x^i).

    The k-th term of a sequence with characteristic polynomial P is ``[x^k] A(x) / B(x)``, where
    B is P reversed and A depends linearly on the first DEGREE terms. Halving k (Bostan-Mori):
    ``A/B = A(x)B(x) / B(x)^2`` and over GF(2) ``B(x)^2 = B(x^2)``, so only the even or odd part
    of ``A*B`` survives. Each halving is linear in A; composing their transposes from the last
    bit of ``j`` to the first turns "coefficient 0 at the end" into q, the weights of the first
    DEGREE terms: exactly x^j mod P.
    """
    if j < DEGREE:
        return 1 << j
    v = 1
    for bit in bin(j)[2:]:
        v = _correlate(_spread(v) << (bit == "1"))
    return _correlate(v)


# [Note: grouped jump]
# The block J words ahead is the XOR of the windows x_{1+i} .. x_{624+i} over the ~10,000 i where
# q = x^(J-1) mod P has a 1: about 25 MB to XOR, which is what a jump costs. Instead, q's
# coefficients are taken _GROUP at a time, and a table holds, for every combination c of _GROUP
# consecutive windows and every start n, their XOR (T[c][n] = XOR over r in c of x_{1+n+r}): a
# group at i = _GROUP * g with bits c is the window T[c][i .. i+623], so a jump XORs one window
# per non-zero group (DEGREE / _GROUP of them) plus the table's 2^_GROUP rows: about half the
# bytes. Tempering is linear over GF(2), so the XOR runs on the tempered words numpy's C
# generator hands out and only the 624 results are untempered.
# The groups are taken _CHUNK at a time, each chunk with a table over only the starts it reads
# (one window's worth of columns is built twice, at chunk ends), and its windows are gathered
# _GATHER at a time: table and gathered windows stay in the core's own cache, and the scratch,
# made once per thread, is a third of a table over every start; the XOR stays the same.
_GROUP = 4
_GROUPS = -(-DEGREE // _GROUP)
_CHUNK = 1024  # groups per table
_WIDTH = _GROUP * (_CHUNK - 1) + N  # table columns: the starts of a chunk, plus one window
_GATHER = 128  # windows gathered at once (320 KB)
_SCRATCH = _Scratch()


@functools.lru_cache(maxsize=64)
def _jump_plan(j: int) -> tuple[tuple[int, tuple[np.ndarray, ...]], ...]:
    """For x^j mod P, per chunk of groups (its first group, then its windows _GATHER at a time):
    where each window starts in the flattened table, one per non-zero group of _GROUP
    coefficients (see [Note: grouped jump]). Depends on the distance only."""
    q = x_pow_mod(j)
    raw = np.frombuffer(q.to_bytes(-(-_GROUPS * _GROUP // 8), "little"), np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[: _GROUPS * _GROUP].reshape(_GROUPS, _GROUP)
    combos = (bits.astype(np.intp) << np.arange(_GROUP)).sum(axis=1)
    plan = []
    for first in range(0, _GROUPS, _CHUNK):
        chunk = combos[first : first + _CHUNK]
        groups = np.flatnonzero(chunk)
        starts = (chunk[groups] * _WIDTH + groups * _GROUP).astype(np.int32)  # kept: 20 KB
        plan.append((first, tuple(np.array_split(starts, max(1, -(-len(starts) // _GATHER))))))
    return tuple(plan)


def temper(x: np.ndarray) -> np.ndarray:
    """mt19937's output transform of untempered words ``x`` (inverse of :func:`untemper`)."""
    y = x ^ (x >> np.uint32(11))
    y = y ^ ((y << np.uint32(7)) & np.uint32(0x9D2C5680))
    y = y ^ ((y << np.uint32(15)) & np.uint32(0xEFC60000))
    return y ^ (y >> np.uint32(18))


def block_ahead(words: np.ndarray, j: int) -> np.ndarray:
    """The block x_j .. x_{j+623} (j >= 1) of the sequence whose first block is ``words``.

    Only 31 bits of x_0 are not part of the generator's state (the twist reads just its top
    bit), so the recurrence holds from x_1 on: shift everything by one word.
    """
    plan = _jump_plan(j - 1)
    scratch = _SCRATCH
    table, windows, tempered = scratch.table, scratch.windows, scratch.tempered
    step = _GROUP * _CHUNK  # words between the first starts of two chunks
    # tempered holds x_{1+step*k} .. for chunk k: the first one from words and the next block,
    # each later one keeps the overlap (one window and the group's shifts) and draws the rest.
    bitgen = numpy_generator(words, N)
    tempered[: N - 1] = temper(words[1:])
    tempered[N - 1 :] = bitgen.random_raw(len(tempered) - N + 1)
    out = np.zeros(N, np.uint32)
    xor, reduce = np.bitwise_xor, np.bitwise_xor.reduce
    for first, gathers in plan:
        if first:
            keep = len(tempered) - step
            tempered[:keep] = tempered[step:]
            tempered[keep:] = bitgen.random_raw(step)
        for r in range(_GROUP):  # rows [2^r, 2^(r+1)): the rows below, XOR the window at r
            xor(table[: 1 << r], tempered[r : r + _WIDTH], out=table[1 << r : 2 << r])
        for starts in gathers:
            xor(out, reduce(windows[starts], axis=0), out=out)
    return untemper(out)


def advance(state: torch.Tensor, draws: int) -> torch.Tensor:
    """The CPU generator state after ``draws`` more 32-bit draws (the cached normals are kept).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> later = advance(g.get_state(), 10**12)  # a few ms
        >>> _ = g.set_state(later)
    """
    if draws < 0:
        raise ValueError(f"cannot move a generator back ({draws} draws)")
    words, pos = read_state(state)
    if draws == 0:
        return state.clone()
    if draws < DRAW_BELOW:
        bitgen = numpy_generator(words, pos)
        bitgen.random_raw(draws, output=False)  # moves without writing the words anywhere
        new_words, new_pos = _numpy_state(bitgen)
        if new_pos == 0:  # numpy may stop right after regenerating: the same point as torch's 624
            raise AssertionError("unexpected numpy MT19937 position 0")
        return write_state(state, new_words, new_pos)
    target = pos + draws  # sequence index of the next word to hand out
    block = (target - 1) // N  # the block that holds the last word drawn
    return write_state(state, block_ahead(words, N * block), target - N * block)
