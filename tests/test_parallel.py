"""Replay on several threads: the values and generator states are eager's, for any count.

Small models would run on one thread (too little work to pay for threads), so every test here
sets ``DORMANT_MIN_BATCH_BYTES`` to 0 to cut them into many batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same, rng_unchanged
from torch import nn

import dormant._replay as replay
from dormant import LazyInitContext, MaterializationError, materialize


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DORMANT_MIN_BATCH_BYTES", "0")


class MixedRandom(nn.Module):
    """Blocks of every kind of random op, with dead draws, shared storages and a second stream."""

    def __init__(self, blocks: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.blocks = nn.ModuleList()
        for i in range(blocks):
            b = nn.Module()
            b.lin = nn.Linear(40, 24)  # kaiming_uniform_ and a bias uniform_
            b.u = nn.Parameter(torch.empty(30, 7).uniform_(-2, 3))
            b.n = nn.Parameter(torch.empty(257, 3).normal_(1.0, 0.5))  # 771: not a multiple of 16
            b.small = nn.Parameter(torch.randn(5))  # under 16: the cached normal sample
            b.fp16 = nn.Parameter(torch.empty(100, dtype=torch.float16).normal_())
            b.register_buffer("perm", torch.randperm(100 + i))
            b.register_buffer("bern", torch.empty(300).bernoulli_(0.3))
            b.register_buffer("mask", F.dropout(torch.ones(64), 0.5))  # draws from the default
            b.trunc = nn.Parameter(torch.empty(16, 16))
            nn.init.trunc_normal_(b.trunc, std=1.0, a=-0.5, b=0.5)  # redraws depend on values
            b.orth = nn.Parameter(torch.empty(99, 32))  # QR splits work by the thread count
            nn.init.orthogonal_(b.orth)
            b.dead = nn.Parameter(torch.empty(200).uniform_())
            b.dead.data.normal_()  # the uniform_ draws are dead: jumped over
            b.own = nn.Parameter(torch.randn(33, generator=g))  # a second stream
            b.register_buffer("mixed", b.u.detach()[:3].clone() * 2 + b.lin.bias.detach()[:7])
            torch.randn(50)  # thrown away: later values depend on the draws
            self.blocks.append(b)
        self.head = nn.Linear(40, 24, bias=False)
        self.head.weight = self.blocks[0].lin.weight  # tied
        self.register_buffer("proj", self.blocks[2].lin.weight.detach().T.contiguous())
        self.tied = self.blocks[1].lin  # the same module twice


def llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=99,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def mixed() -> nn.Module:
    return MixedRandom()


@pytest.mark.parametrize("ctor", [llama, mixed])
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_threads_give_eager_values_and_generator_states(
    ctor: Callable[[], nn.Module], threads: int
) -> None:
    torch.manual_seed(0)
    eager = ctor()
    eager_state = torch.get_rng_state()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = ctor()
    assert torch.equal(torch.get_rng_state(), eager_state)
    with rng_unchanged():
        report = materialize(lazy, report=True, threads=threads)
    assert report.threads == threads  # every thread had a batch
    assert_same(eager, lazy)
    for (name, e), (_, x) in zip(eager.state_dict().items(), lazy.state_dict().items()):
        assert torch.equal(e, x), name
    assert report.ops_replayed > 0 and len(report.random_ops) > 0


def test_report_lists_random_ops_in_recorded_order_for_any_thread_count() -> None:
    reports = []
    for threads in (1, 3):
        torch.manual_seed(0)
        with LazyInitContext():
            m = MixedRandom()
        reports.append(materialize(m, report=True, threads=threads))
    assert reports[0].random_ops == reports[1].random_ops
    assert reports[0].ops_replayed == reports[1].ops_replayed
    assert "on 3 threads" in str(reports[1])


def test_values_are_handed_over_on_the_calling_thread_a_few_at_a_time() -> None:
    with LazyInitContext():
        params = [nn.Parameter(torch.empty(1000).normal_()) for _ in range(40)]
    storages = [p._lazy_storage for p in params]  # type: ignore[attr-defined]
    callers = set()

    def on_ready(s: object, value: torch.UntypedStorage) -> None:
        callers.add(threading.get_ident())
        threading.Event().wait(0.002)  # a slow caller: threads must not run far ahead

    stats = replay.ReplayStats()
    replay.compute_each(storages, on_ready, threads=2, stats=stats)
    assert stats.threads == 2
    assert callers == {threading.get_ident()}
    # per thread: one being written, one waiting to be taken
    assert 2 <= stats.most_held <= 2 * 2 + 1, stats.most_held


def test_an_op_that_fails_on_a_thread_names_the_op_and_leaves_the_model_usable() -> None:
    torch.manual_seed(0)
    eager = MixedRandom()
    torch.manual_seed(0)
    with LazyInitContext():
        lazy = MixedRandom()
    node = lazy.blocks[3].u._lazy_storage.writers[-1]  # type: ignore[attr-defined]
    op = node.op

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no memory left")

    node.label = node.label  # (the label names the recorded op, not the stand-in)
    node.op = broken
    with pytest.raises(MaterializationError, match=r"replaying aten\.uniform_.*no memory left"):
        materialize(lazy, threads=3)
    assert not [t for t in threading.enumerate() if t.name.startswith("dormant-replay")]
    node.op = op
    with rng_unchanged():
        materialize(lazy, threads=3)
    assert_same(eager, lazy)


def test_an_interrupt_while_values_stream_stops_the_threads() -> None:
    torch.manual_seed(0)
    expected = [torch.empty(500).uniform_() for _ in range(30)]
    torch.manual_seed(0)
    with LazyInitContext():
        params = nn.ParameterList([nn.Parameter(torch.empty(500).uniform_()) for _ in range(30)])
    storages = [p._lazy_storage for p in params]  # type: ignore[attr-defined]
    seen = []

    def on_ready(s: object, value: torch.UntypedStorage) -> None:
        seen.append(s)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay.compute_each(storages, on_ready, threads=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("dormant-replay")]
    materialize(params, threads=2)
    assert all(torch.equal(p, e) for p, e in zip(params, expected))


def test_thread_count_is_checked() -> None:
    with LazyInitContext():
        m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="at least 1 thread"):
        materialize(m, threads=0)


def test_replay_threads_use_the_callers_intra_op_thread_count() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a new thread starts from the machine's count instead
    try:
        torch.manual_seed(0)
        eager = MixedRandom(blocks=3)
        torch.manual_seed(0)
        with LazyInitContext():
            lazy = MixedRandom(blocks=3)
        materialize(lazy, threads=2)
    finally:
        torch.set_num_threads(before)
    assert_same(eager, lazy)
