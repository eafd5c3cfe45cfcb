"""load_checkpoint(): lazy loading from files the tests write, exact, without wasted init."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_same
from safetensors.torch import save_file
from torch import nn

from dormant import CheckpointError, LazyInitContext, is_lazy, load_checkpoint, materialize


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scale", torch.rand(16))


def source_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(100)
    return Net().state_dict()


def write(fmt: str, state: dict[str, torch.Tensor], root: Path) -> Path:
    unique = {k: v for k, v in state.items() if k != "head.weight"}  # tied: stored once
    if fmt == "safetensors":
        save_file(unique, root / "model.safetensors")
        return root / "model.safetensors"
    if fmt == "sharded":
        keys = sorted(unique)
        save_file({k: unique[k] for k in keys[:3]}, root / "model-00001-of-00002.safetensors")
        save_file({k: unique[k] for k in keys[3:]}, root / "model-00002-of-00002.safetensors")
        return root
    if fmt == "torch":
        torch.save(state, root / "pytorch_model.bin")
        return root / "pytorch_model.bin"
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=str(root / "dcp"), no_dist=True)
    return root / "dcp"


def eager_reference(state: dict[str, torch.Tensor], drop: tuple[str, ...] = ()) -> nn.Module:
    torch.manual_seed(0)
    model = Net()
    model.load_state_dict({k: v for k, v in state.items() if k not in drop}, strict=not drop)
    return model


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "torch", "dcp"])
def test_lazy_load_equals_eager_load(fmt: str, tmp_path: Path) -> None:
    state = source_state()
    path = write(fmt, state, tmp_path)
    torch.manual_seed(0)
    with LazyInitContext():
        model = Net()
    result = load_checkpoint(model, path)
    assert is_lazy(model), "loading must not materialize a lazy model"
    assert result.missing == [] and "head.weight" in result.loaded
    materialize(model)
    assert_same(eager_reference(state), model)
    assert model.head.weight is model.embed.weight


def test_loading_into_a_real_model(tmp_path: Path) -> None:
    state = source_state()
    torch.manual_seed(0)
    model = Net()
    load_checkpoint(model, write("safetensors", state, tmp_path))
    assert_same(eager_reference(state), model)


def test_loaded_tensors_are_never_randomly_initialised(
    tmp_path: Path,
) -> None:
    state = source_state()
    drop = ("body.2.weight", "body.2.bias")  # missing: initialised the model's way
    save_file({k: v for k, v in state.items() if k not in drop and k != "head.weight"},
              tmp_path / "m.safetensors")  # fmt: skip
    torch.manual_seed(0)
    with LazyInitContext():
        model = Net()
    load_checkpoint(model, tmp_path / "m.safetensors", strict=False)
    report = materialize(model, report=True)
    assert_same(eager_reference(state, drop), model)
    # Only the two missing tensors are computed from random numbers; the rest are read.
    assert len(report.random_ops) == 2, report.random_ops


def test_mismatches_are_listed_and_nothing_is_loaded(tmp_path: Path) -> None:
    state = source_state()
    state["body.0.weight"] = torch.zeros(8, 16)
    state["extra.weight"] = torch.zeros(1)
    del state["scale"]
    save_file({k: v for k, v in state.items() if k != "head.weight"}, tmp_path / "m.safetensors")
    torch.manual_seed(0)
    with LazyInitContext():
        model = Net()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path / "m.safetensors")
    err = info.value
    assert err.missing == ["scale"] and err.unexpected == ["extra.weight"]
    assert err.mismatched == [("body.0.weight", "(32, 16) torch.float32", "(8, 16) torch.float32")]
    assert "nothing was loaded" in str(err) and "strict=False" in str(err)
    materialize(model)  # untouched: the model's own initialization
    torch.manual_seed(0)
    assert_same(Net(), model)


PEAK_PROBE = textwrap.dedent(
    """
    import resource, sys, psutil, torch
    from torch import nn
    from dormant import LazyInitContext, load_checkpoint, materialize
    with LazyInitContext():
        warm = nn.Linear(2, 2)
    materialize(warm)
    before = psutil.Process().memory_info().rss
    if sys.argv[2] == "lazy":
        with LazyInitContext():
            model = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(16)])
        load_checkpoint(model, sys.argv[1])
        materialize(model)
    else:  # the usual way: build, read the file, load the state dict
        from safetensors.torch import load_file
        model = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(16)])
        model.load_state_dict(load_file(sys.argv[1]))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    """
)


def test_lazy_load_peaks_near_the_model_size(tmp_path: Path) -> None:
    import os

    state = {f"{i}.weight": torch.randn(2048, 2048) for i in range(16)}
    save_file(state, tmp_path / "m.safetensors")
    del state
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}

    def peak(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", PEAK_PROBE, str(tmp_path / "m.safetensors"), mode],
            capture_output=True, text=True, check=True, env=env,
        ).stdout  # fmt: skip
        return int(out.split()[-1])

    model_bytes = 16 * 2048 * 2048 * 4
    lazy, eager = peak("lazy"), peak("eager")
    # The eager way holds the random init and the file's copy at once (about 2x the model);
    # lazily the model is filled tensor by tensor. RSS also counts the file pages being read.
    assert lazy < 1.5 * model_bytes, f"lazy load peak {lazy / 2**20:.0f} MiB"
    assert lazy < 0.75 * eager, f"lazy {lazy / 2**20:.0f} MiB, eager {eager / 2**20:.0f} MiB"
