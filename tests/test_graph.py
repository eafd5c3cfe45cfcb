"""The op graph: versions, aliasing as data flow, and ownership that points backwards in time."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import torch
from torch import nn

from dormant import LazyInitContext, load_checkpoint
from dormant._graph import NodeKind


def test_every_write_makes_the_next_version() -> None:
    with LazyInitContext():
        w = torch.empty(4, 4)
        storage = w._lazy_storage
        assert storage.version == 1
        w.normal_()
        w[0].zero_()  # through a view: the same storage
        w.t().mul_(2)
    assert storage.version == 4
    labels = [node.label for node in storage.writers]
    assert labels[1:] == ["aten.normal_.default", "aten.zero_.default", "aten.mul_.Tensor"]
    versions = [w.version for node in storage.writers for w in node.writes if w.storage is storage]
    assert versions == [1, 2, 3, 4]


def test_a_full_overwrite_does_not_keep_the_old_contents() -> None:
    with LazyInitContext():
        w = torch.empty(8)
        w.normal_()
        w[:4].fill_(1.0)
    writes = [
        next(x for x in n.writes if x.storage is w._lazy_storage) for n in w._lazy_storage.writers
    ]
    assert [x.keeps_base for x in writes] == [False, False, True]


def test_views_and_ties_share_one_storage() -> None:
    with LazyInitContext():
        emb = nn.Embedding(10, 4)
        head = nn.Linear(4, 10, bias=False)
        head.weight = emb.weight
        row = emb.weight[3]
    assert row._lazy_storage is emb.weight._lazy_storage is head.weight._lazy_storage


def test_a_node_reads_the_version_its_input_had() -> None:
    with LazyInitContext():
        a = torch.ones(3)
        b = a * 2  # reads version 1 of a
        a.add_(1)
    node = b._lazy_storage.writers[0]
    assert [r.version for r in node.reads] == [1]
    assert a._lazy_storage.version == 2


def test_nothing_points_forward_so_dead_tensors_free_their_graph() -> None:
    with LazyInitContext():
        keep = torch.ones(3)
        dropped = keep * 2
    node = weakref.ref(dropped._lazy_storage.writers[0])
    del dropped
    gc.collect()
    assert node() is None, "the node only the dropped tensor needed is still alive"
    assert keep._lazy_storage.version == 1


def test_each_node_says_what_its_op_is(tmp_path: Path) -> None:
    # Replay and sharded placement ask the node what its op is, never the op's class.
    from safetensors.torch import save_file

    save_file({"weight": torch.arange(12.0).reshape(3, 4)}, str(tmp_path / "m.safetensors"))
    with LazyInitContext():
        read = nn.Linear(4, 3, bias=False)
        given = torch.tensor([1.0, 2.0])
        drawn = torch.randn(64)  # (16 or more: a known count of draws)
        whole = torch.empty(4, 4)
        nn.init.orthogonal_(whole)
    load_checkpoint(read, tmp_path / "m.safetensors")
    copied = read.weight._lazy_storage.writers[-1]  # weight.copy_(what the file holds)
    source = copied.reads[0].storage
    assert source is not None
    nodes = {
        name: storage.writers[-1]
        for name, storage in [
            ("read", source),
            ("given", given._lazy_storage),
            ("drawn", drawn._lazy_storage),
            ("init", whole._lazy_storage),
        ]
    }
    kinds = {name: node.kind for name, node in nodes.items()}
    assert kinds == {
        "read": NodeKind.READ,
        "given": NodeKind.CONSTANT,
        "drawn": NodeKind.OP,
        "init": NodeKind.LIBRARY,
    }
    assert [name for name, node in nodes.items() if node.is_source] == ["read", "given"]
    assert nodes["given"].constant is not None and nodes["read"].constant is None
    assert nodes["read"].window is not None and nodes["given"].window is None
    window = nodes["read"].window
    assert window is not None and torch.equal(window(5, 8), torch.arange(5.0, 8.0))
    library = nodes["init"].library
    assert library is not None and library.name == "torch.nn.init.orthogonal_"
    assert [name for name, node in nodes.items() if node.rng is not None] == ["drawn", "init"]
    assert nodes["drawn"].random_step.draws is not None
