"""Replaying part of a tensor: the exact values of a range of elements, without the rest.

A rank of a sharded model needs only its own shard of each weight. [Note: windows] explains how
dormant computes a contiguous range of a lazy storage's elements (a *window*) from the recorded
ops alone, so a rank's work and memory are its shard's, not the whole tensor's.

[Note: windows]
Most recorded initialization is elementwise: ``normal_`` or ``uniform_`` over a whole weight,
``fill_``/``zero_``, a scaling, a dtype cast, a copy from a checkpoint tensor. For such a chain,
elements ``[lo, hi)`` of the result depend only on elements ``[lo, hi)`` of the inputs, and
random ops draw at known places on their stream:

- ``uniform_``: element ``i`` takes draws ``[k*i, k*(i+1))`` after the op's start (``k`` = 1, or
  2 for float64).
- ``normal_`` on ``n >= 16`` contiguous elements works in blocks of 16: block ``j`` takes draws
  ``[16*k*j, 16*k*(j+1))``. When ``n % 16 != 0``, the last 16 elements are computed again as
  one more block: from the draws after the first ``n`` elements' (float32, float64), or after
  the whole blocks' (bfloat16, float16).

So a window of a random op is one generator placement (``_mt19937.advance``: a jump or a short
draw) and the window's own draws. Each rule is checked once per process and dtype against the
installed torch (:func:`random_rule`); an op, dtype or layout without a rule raises
:class:`Unsliceable`, and the caller computes that storage whole instead, once, and says so.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_unflatten

from . import _mt19937, _rng
from ._draws import plain_normal
from ._graph import Constant, LazyStorage, Node, TensorRef
from ._lanes import with_generator
from ._plan import write_of
from ._replay import run_for_draws
from ._session import real_execution

aten = torch.ops.aten

# Random ops, by the rule their draws follow.
_UNIFORM = {aten.uniform_.default}
_NORMAL = {aten.normal_.default}
_FACTORIES = {
    aten.randn.default: aten.normal_.default,
    aten.randn.generator: aten.normal_.default,
    aten.rand.default: aten.uniform_.default,
    aten.rand.generator: aten.uniform_.default,
}
# Factories of constant tensors: their fill value, from (args, kwargs); None for ``empty``.
_CONSTANT_FACTORIES: dict[Any, Callable[[list[Any]], Any]] = {
    aten.empty.memory_format: lambda args: None,
    aten.empty_strided.default: lambda args: None,
    aten.empty_like.default: lambda args: None,
    aten.zeros.default: lambda args: 0,
    aten.zeros_like.default: lambda args: 0,
    aten.ones.default: lambda args: 1,
    aten.ones_like.default: lambda args: 1,
    aten.full.default: lambda args: args[1],
    aten.full_like.default: lambda args: args[1],
    # (``new_zeros``: FSDP2's padded shard of a parameter, before its rows are copied in)
    aten.new_empty.default: lambda args: None,
    aten.new_zeros.default: lambda args: 0,
    aten.new_ones.default: lambda args: 1,
    aten.new_full.default: lambda args: args[2],
}
# Ops that are elementwise although torch does not tag them ``pointwise``.
_ELEMENTWISE = {
    aten.fill_.Scalar,
    aten.fill_.Tensor,
    aten.zero_.default,
    aten.copy_.default,
    aten._to_copy.default,
    aten.clone.default,
}
# Library calls recorded whole whose values do not depend on the tensor's shape: a small one is
# run whole on a flat tensor, like a random op.
_FLAT_LIBRARY_CALLS = {"torch.nn.init.trunc_normal_"}
# A random op over this many elements or fewer is run whole and sliced: cheaper than a jump.
_SMALL = 1 << 16


class Unsliceable(Exception):
    """A storage whose window cannot be computed alone; the message says why."""


@dataclass(frozen=True)
class RandomRule:
    """Where a random op's elements draw from (see [Note: windows])."""

    draws_per_element: int
    blocks: bool = False  # normal_: 16-element blocks
    # When n % 16 != 0 the last 16 elements are drawn again as one block, from the draws after
    # the first n elements' (float32/64) or after the whole blocks' (reduced precision).
    tail_after_blocks: bool = False


class Window:
    """Computes windows of lazy storages (one instance per pass: it keeps generators placed)."""

    def __init__(self) -> None:
        self.draws = _Draws()

    @property
    def drawn(self) -> int:
        """Random elements drawn (a measure of the work done)."""
        return self.draws.drawn

    def values(
        self,
        storage: LazyStorage,
        dtype: torch.dtype,
        lo: int,
        hi: int,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Elements ``[lo, hi)`` of ``storage``'s current value, seen as ``dtype``: a 1-D tensor
        (``out`` if given: contiguous, ``hi - lo`` elements of ``dtype``). Raises
        :class:`Unsliceable` if an op in the way has no window rule."""
        with real_execution():
            return self._at_version(storage, storage.version, dtype, lo, hi, out)

    def _at_version(
        self,
        s: LazyStorage,
        version: int,
        dtype: torch.dtype,
        lo: int,
        hi: int,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if out is None:
            out = torch.empty(hi - lo, dtype=dtype, device=s.device)
        if s.cache is not None and s.cache_version == version:  # computed early
            early = torch.empty(0, dtype=dtype, device=s.device).set_(s.cache)
            return out.copy_(early[lo:hi])
        if version == 0:  # never written: ``torch.empty``'s memory
            return out
        node = s.writers[version - 1]
        write = write_of(node, s, version)
        view = write.ref.meta if write.ref is not None else None
        if view is None or not view.is_contiguous():
            raise Unsliceable(f"{node.label} writes a strided view")
        if view.dtype != dtype:
            # Checkpoint bytes (a source over a whole storage) read as the tensor's dtype.
            size, unit = dtype.itemsize, view.dtype.itemsize
            if not _is_source(node) or write.keeps_base or (lo * size) % unit or (hi * size) % unit:
                raise Unsliceable(f"{node.label} writes the storage as {view.dtype}, not {dtype}")
            self._at_version(
                s, version, view.dtype, lo * size // unit, hi * size // unit, out.view(view.dtype)
            )
            return out
        offset, n = int(view.storage_offset()), view.numel()
        a, b = max(lo, offset) - offset, min(hi, offset + n) - offset  # the window in the view
        if write.keeps_base:
            self._at_version(s, version - 1, dtype, lo, hi, out)
        if a < b:
            written = write.ref if write.output_index is None else None  # None: a new output
            self._apply(node, written, out[offset + a - lo : offset + b - lo], a, b, n)
        return out

    def _apply(
        self, node: Node, written: TensorRef | None, out: torch.Tensor, a: int, b: int, n: int
    ) -> None:
        """Write elements ``[a, b)`` of ``node``'s output (an ``n``-element view) into ``out``."""
        op = node.op
        if _is_source(node):
            self._read_source(node, out, a, b)
        elif node.rng is not None:
            self.draws.window(node, written, out, a, b, n, self._arguments)
        elif op in _CONSTANT_FACTORIES and written is None:
            args, _ = tree_unflatten(node.flat_args, node.spec)
            value = _CONSTANT_FACTORIES[op](list(args))
            if value is not None:
                out.fill_(value)
        elif isinstance(op, torch._ops.OpOverload) and (
            op in _ELEMENTWISE or torch.Tag.pointwise in op.tags
        ):
            self._elementwise(node, written, out, a, b, n)
        elif op is aten.constant_pad_nd.default:
            self._pad_end(node, out, a, b)
        else:
            raise Unsliceable(f"{node.label} has no elementwise rule")

    def _read_source(self, node: Node, out: torch.Tensor, a: int, b: int) -> None:
        window = node.window  # a checkpoint read that can read a slice
        value = window(a, b) if window is not None else node.op().reshape(-1)[a:b]
        out.copy_(value.reshape(-1))

    def _arguments(
        self, node: Node, written: TensorRef | None, out: torch.Tensor, a: int, b: int, n: int
    ) -> tuple[list[Any], dict[str, Any]]:
        args = []
        for x in node.flat_args:
            if x is written:
                args.append(out)
            elif isinstance(x, TensorRef):
                args.append(self._read(node, x, a, b, n))
            elif isinstance(x, Constant):
                args.append(_slice_real(node, x(), a, b, n))
            else:
                args.append(x)
        call_args, call_kwargs = tree_unflatten(args, node.spec)
        return list(call_args), call_kwargs

    def _read(
        self, node: Node, ref: TensorRef, a: int, b: int, n: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        meta, s = ref.meta, ref.storage
        if s is None or ref.shape_only:
            raise Unsliceable(f"{node.label} reads a tensor only for its shape")
        if meta.dim() == 0:
            offset = int(meta.storage_offset())
            return self._at_version(s, ref.version, meta.dtype, offset, offset + 1).reshape(())
        if meta.numel() != n:
            raise Unsliceable(f"{node.label} reads a broadcast tensor")
        offset = int(meta.storage_offset())
        if not meta.is_contiguous():
            return self._read_strided(s, ref.version, meta, a, b, out)
        return self._at_version(s, ref.version, meta.dtype, offset + a, offset + b, out)

    def _read_strided(
        self,
        s: LazyStorage,
        version: int,
        meta: torch.Tensor,
        a: int,
        b: int,
        out: torch.Tensor | None,
    ) -> torch.Tensor:
        """Elements ``[a, b)`` (in row-major order) of a strided view of ``s``: the window of
        storage that the view's rows holding them span, seen through the view's strides. A
        column slice of a weight (tensor parallelism's row-wise layout, copied contiguous) spans
        whole rows: those rows alone are computed."""
        if a >= b:
            return out if out is not None else torch.empty(0, dtype=meta.dtype, device=s.device)
        shape, strides = tuple(meta.shape), tuple(meta.stride())
        if min(strides) < 0:
            raise Unsliceable("a view with a negative stride")
        inner = math.prod(shape[1:])
        first, end = a // inner, (b - 1) // inner + 1  # the view's rows that hold [a, b)
        lo = int(meta.storage_offset()) + first * strides[0]
        extent = sum((n - 1) * st for n, st in zip(shape[1:], strides[1:], strict=True))
        span = self._at_version(
            s, version, meta.dtype, lo, lo + (end - 1 - first) * strides[0] + extent + 1
        )
        rows = span.as_strided((end - first, *shape[1:]), strides)
        values = rows.reshape(-1)[a - first * inner : b - first * inner]
        return values if out is None else out.copy_(values)

    def _elementwise(
        self, node: Node, written: TensorRef | None, out: torch.Tensor, a: int, b: int, n: int
    ) -> None:
        if len(node.writes) != 1:
            raise Unsliceable(f"{node.label} writes more than one tensor")
        source = node.flat_args[1] if len(node.flat_args) > 1 else None
        if (  # dst.copy_(src) (a checkpoint load): src's window straight into the shard
            node.op is aten.copy_.default
            and written is not None
            and isinstance(source, TensorRef)
            and source.meta.dtype == out.dtype
            and source.meta.dim() > 0
            and source.storage is not None
            and source.storage.device == out.device
        ):
            self._read(node, source, a, b, n, out)
            return
        args, kwargs = self._arguments(node, written, out, a, b, n)
        result = node.op(*args, **kwargs)
        if written is None or result is not out:  # out-of-place: copy the new output in
            if isinstance(result, (tuple, list)):
                raise Unsliceable(f"{node.label} has several outputs")
            if result.data_ptr() != out.data_ptr():
                out.copy_(result.reshape(-1))

    def _pad_end(self, node: Node, out: torch.Tensor, a: int, b: int) -> None:
        """``constant_pad_nd`` that only adds rows at the end (DTensor padding the last chunk of
        an uneven ``Shard(0)``): the input's own elements, then the value."""
        (source, pad, *rest), _ = tree_unflatten(node.flat_args, node.spec)
        meta = source.meta if isinstance(source, TensorRef) else None
        if meta is None or source.storage is None or not meta.is_contiguous() or meta.dim() == 0:
            raise Unsliceable(f"{node.label} pads a strided or real tensor")
        if any(pad[:-1]) or pad[-1] < 0 or len(pad) != 2 * meta.dim():
            raise Unsliceable(f"{node.label} pads other than rows at the end")
        end = min(b, meta.numel())
        if a < end:
            offset = int(meta.storage_offset())
            self._at_version(
                source.storage, source.version, meta.dtype, offset + a, offset + end, out[: end - a]
            )
        if b > end:
            out[max(a, end) - a :].fill_(rest[0] if rest and rest[0] is not None else 0)


# ``Window._arguments``: a node's call arguments over a window of its output.
Arguments = Callable[
    [Node, TensorRef | None, torch.Tensor, int, int, int], tuple[list[Any], dict[str, Any]]
]


class _Draws:
    """The random ops of a pass's windows: a window of a random op is one placement of a private
    generator and the window's own draws (see [Note: windows]). The generator is kept between
    windows, so a window that starts where the last one ended draws straight on."""

    def __init__(self) -> None:
        self.generator = torch.Generator()
        self.at: _rng.Position | None = None  # where ``generator`` stands, when known
        self.drawn = 0  # random elements drawn (a measure of the work done)

    def window(
        self,
        node: Node,
        written: TensorRef | None,
        out: torch.Tensor,
        a: int,
        b: int,
        n: int,
        arguments: Arguments,
    ) -> None:
        """Write elements ``[a, b)`` of random ``node``'s output (``n`` elements) into ``out``;
        ``arguments`` gives the op's arguments over a window (its other inputs' windows)."""
        step = node.random_step
        if step.start is None:
            assert step.stream is not None
            step.stream.resolve(run_for_draws)
        start = step.start
        assert start is not None
        if out.device.type != "cpu":
            raise Unsliceable(f"{node.label} draws on {out.device}: no window rule")
        in_shape = written is not None and written.meta.numel() == n
        shaped = (call := node.library) is not None and call.name not in _FLAT_LIBRARY_CALLS
        if shaped and not (n <= _SMALL and in_shape):
            # orthogonal_'s QR needs the tensor's shape: never run on a flat window
            raise Unsliceable(f"{node.label} needs the whole tensor")
        fill, like = _fill(node, written, arguments)
        rule = random_rule(like, out.dtype)
        if n <= _SMALL:  # cheaper whole than placed twice
            whole = torch.empty(n, dtype=out.dtype)
            if in_shape:  # in the written tensor's shape: an init recorded whole needs it
                assert written is not None
                whole = whole.view(written.meta.shape)
            self._draw(fill, whole, start, None)
            out.copy_(whole.view(-1)[a:b])
        elif rule is None:
            if node.library is not None:  # trunc_normal_ with bounds normal_ can reach
                raise Unsliceable(f"{node.label}: a rejection loop, its draws depend on its values")
            raise Unsliceable(f"{node.label}: no window rule for {out.dtype}")
        else:
            k = rule.draws_per_element
            random_window(
                rule, lambda t, e: self._draw(fill, t, start.after(k * e), k), out, a, b, n
            )

    def _draw(
        self,
        fill: Callable[[torch.Tensor, torch.Generator], object],
        out: torch.Tensor,
        at: _rng.Position,
        draws_per_element: int | None,
    ) -> None:
        """``fill(out)`` with the generator placed at ``at``."""
        at.place(self.generator, self.at)
        fill(out, self.generator)
        # (rule draws are whole blocks, so their count is known; a whole small op's may not be)
        self.at = at.after(draws_per_element * out.numel()) if draws_per_element else None
        self.drawn += out.numel()


def _fill(
    node: Node, written: TensorRef | None, arguments: Arguments
) -> tuple[Callable[[torch.Tensor, torch.Generator], object], Any]:
    """``fill(t, generator)``: ``node``'s random op run in place on ``t``; and the in-place
    op whose rule it follows."""
    op = node.op
    if op in _FACTORIES:  # randn(size) is normal_ on a new tensor, rand(size) uniform_
        like = _FACTORIES[op]
        return (lambda t, g: like(t, generator=g)), like
    reads_other = any(isinstance(x, TensorRef) and x is not written for x in node.flat_args)
    overload = with_generator(op)  # the op, or its overload that takes a generator
    if written is None or reads_other or overload is None:
        raise Unsliceable(f"{node.label}: no window rule for this random op")
    call = node.library
    if call is not None and node.random_step.draws is not None:
        _, call_kwargs = tree_unflatten(node.flat_args, node.spec)
        plain = plain_normal(call.name, call_kwargs)
        if plain is not None:  # one round of normal_ that rejects nothing: any window is normal_'s
            mean, std = plain
            return (lambda t, g: t.normal_(mean, std, generator=g)), aten.normal_.default

    def fill(t: torch.Tensor, g: torch.Generator) -> object:
        args, kwargs = arguments(node, written, t, 0, t.numel(), t.numel())
        kwargs["generator"] = g
        return overload(*args, **kwargs)

    return fill, op


def random_window(
    rule: RandomRule,
    draw: Callable[[torch.Tensor, int], None],
    out: torch.Tensor,
    a: int,
    b: int,
    n: int,
) -> None:
    """Write elements ``[a, b)`` of a random op over ``n`` contiguous elements into ``out``.

    ``draw(t, e)`` runs the op on ``t`` from ``e`` elements' worth of draws after its start.
    """
    if not rule.blocks:
        draw(out, a)
        return
    # normal_: elements before ``main`` come from their 16-block; the last 16 from the tail.
    main = n - 16 if n % 16 else n
    end = min(b, main)
    if a < end:
        head_end = min(end, -(-a // 16) * 16)
        middle_end = max(head_end, end // 16 * 16)
        if a < head_end:  # an unaligned start: through its own 16-element block
            block = torch.empty(16, dtype=out.dtype)
            draw(block, a // 16 * 16)
            out[: head_end - a].copy_(block[a % 16 : a % 16 + head_end - a])
        if head_end < middle_end:
            draw(out[head_end - a : middle_end - a], head_end)
        if middle_end < end:
            block = torch.empty(16, dtype=out.dtype)
            draw(block, middle_end)
            out[middle_end - a : end - a].copy_(block[: end - middle_end])
    if b > main:
        tail = torch.empty(16, dtype=out.dtype)
        draw(tail, n // 16 * 16 if rule.tail_after_blocks else n)
        lo = max(a, main)
        out[lo - a :].copy_(tail[lo - main : b - main])


def _is_source(node: Node) -> bool:
    """A node without inputs: a constant, or a read from a checkpoint file (``_graph.source``)."""
    return node.is_source


def _slice_real(node: Node, value: torch.Tensor, a: int, b: int, n: int) -> torch.Tensor:
    if value.dim() == 0:
        return value
    if value.numel() != n or not value.is_contiguous():
        raise Unsliceable(f"{node.label} reads a broadcast or strided real tensor")
    return value.reshape(-1)[a:b]


@functools.cache
def random_rule(op: Any, dtype: torch.dtype) -> RandomRule | None:
    """The window rule of random ``op`` on ``dtype``, if the installed torch follows it.

    Checked once per process against whole-tensor draws, on sizes and windows that cover the
    aligned, unaligned and tail cases; None when no candidate rule reproduces them exactly.
    """
    if op in _UNIFORM:
        candidates = [RandomRule(1), RandomRule(2)]
    elif op in _NORMAL:
        candidates = [RandomRule(k, True, after) for after in (False, True) for k in (1, 2)]
    else:
        return None
    with real_execution():
        for rule in candidates:
            if _rule_holds(op, dtype, rule):
                return rule
    return None


def _rule_holds(op: Any, dtype: torch.dtype, rule: RandomRule) -> bool:
    gen = torch.Generator().manual_seed(20261202)
    state = gen.get_state()

    def draw(t: torch.Tensor, skip: int) -> None:
        gen.set_state(_mt19937.advance(state, rule.draws_per_element * skip))
        op(t, generator=gen)

    for n in (1003, 1024, 4099):
        full = torch.empty(n, dtype=dtype)
        gen.set_state(state)
        op(full, generator=gen)
        for a, b in ((0, n), (5, 37), (16, 64), (100, 517), (n - 20, n), (n - 3, n), (0, 1)):
            part = torch.empty(b - a, dtype=dtype)
            random_window(rule, draw, part, a, b, n)
            if not torch.equal(part, full[a:b]):
                return False
    return True
