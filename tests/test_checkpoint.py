"""load_checkpoint(): lazy loading from files the tests write, exact, without wasted init."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_same
from safetensors.torch import save, save_file
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


# --- never silently wrong: changed files, stale shards, files that are not checkpoints -----------


def lazy_net() -> Net:
    torch.manual_seed(0)
    with LazyInitContext():
        return Net()


def other_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return Net().state_dict()


def materialize_fails(model: nn.Module, match: str) -> CheckpointError:
    """``materialize(model)`` fails with a CheckpointError matching ``match``, and leaves the
    model lazy."""
    with pytest.raises(CheckpointError, match=match) as info:
        materialize(model)
    assert is_lazy(model), "a refused read must leave the model lazy"
    return info.value


def assert_recovers(model: nn.Module, root: Path) -> None:
    """After the error the model is usable: loading a good file, then materializing, is exact."""
    state = source_state()
    root.mkdir()
    load_checkpoint(model, write("safetensors", state, root))
    materialize(model)
    assert_same(eager_reference(state), model)


def move_into_place(new: Path, old: Path) -> None:
    """Replace ``old`` (a file or a directory's files) by ``new``, as careful savers do."""
    if new.is_dir():
        for f in new.iterdir():
            os.replace(f, old / f.name)
    else:
        os.replace(new, old)


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "torch", "dcp"])
def test_a_checkpoint_replaced_before_materialize_is_an_error(fmt: str, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "new").mkdir()
    path = write(fmt, source_state(), tmp_path / "ckpt")
    model = lazy_net()
    load_checkpoint(model, path)
    # Saved again with body.0.weight smaller: read blindly, it would fill a larger storage.
    new = write(fmt, {**source_state(), "body.0.weight": torch.zeros(8, 16)}, tmp_path / "new")
    move_into_place(new, path)
    err = materialize_fails(
        model,
        r"checkpoint file \S+ckpt\S* changed after load_checkpoint \(replaced by another file"
        r".*\), so \S+ was not read from it .* call load_checkpoint\(model, \.\.\.\) again",
    )
    assert err.path is not None and Path(err.path).parent in (path, path.parent)
    assert_recovers(model, tmp_path / "good")


TRUNCATE_PROBE = textwrap.dedent(
    """
    import os, sys, torch
    from torch import nn
    from safetensors.torch import load_file
    from dormant import LazyInitContext, load_checkpoint, materialize
    path, good = sys.argv[1], sys.argv[2]
    with LazyInitContext():
        model = nn.Linear(256, 256)
    load_checkpoint(model, path)
    os.truncate(path, os.path.getsize(path) // 2)
    try:
        materialize(model)
    except Exception as e:
        print(type(e).__name__, e)
    load_checkpoint(model, good)
    materialize(model)
    print("recovered", torch.equal(model.weight, load_file(good)["weight"]))
    """
)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_a_checkpoint_truncated_before_materialize_is_an_error_not_a_crash(
    fmt: str, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    state = nn.Linear(256, 256).state_dict()
    path = tmp_path / ("m.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    save_file(state, path) if fmt == "safetensors" else torch.save(state, path)
    save_file(state, tmp_path / "good.safetensors")
    size = path.stat().st_size
    # A child process: reading pages of a memory map past the new end of file is a SIGBUS.
    run = subprocess.run(
        [sys.executable, "-c", TRUNCATE_PROBE, str(path), str(tmp_path / "good.safetensors")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, f"returncode {run.returncode}: {run.stderr[-2000:]}"
    assert re.search(
        rf"CheckpointError .*checkpoint file {re.escape(str(path))} changed after "
        rf"load_checkpoint \(size {size} -> {size // 2} bytes; modified\)",
        run.stdout,
    ), run.stdout
    assert "recovered True" in run.stdout, run.stdout


def test_a_file_rewritten_in_place_with_its_times_kept_is_an_error(tmp_path: Path) -> None:
    state = source_state()
    path = write("safetensors", state, tmp_path)
    model = lazy_net()
    load_checkpoint(model, path)
    # The same bytes with another dtype, written over the file, its times set back (as
    # `cp -p` or `rsync -t` leave them): only what is read can tell.
    before = path.stat()
    unique = {k: v for k, v in state.items() if k != "head.weight"}
    data = save({**unique, "scale": state["scale"].view(torch.int32)})
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    err = materialize_fails(
        model,
        re.escape(f"scale in {path} is now (16,) torch.int32, but was (16,) torch.float32"),
    )
    assert (err.key, err.path) == ("scale", str(path))
    assert_recovers(model, tmp_path / "good")


def write_indexed(state: dict[str, torch.Tensor], root: Path, shards: int, ext: str) -> None:
    """``state`` in ``shards`` files and the index transformers writes; other files stay."""
    unique = {k: v for k, v in state.items() if k != "head.weight"}
    keys, stem = sorted(unique), "model" if ext == "safetensors" else "pytorch_model"
    weight_map: dict[str, str] = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: unique[k] for k in keys[i::shards]}
        save_file(part, root / name) if ext == "safetensors" else torch.save(part, root / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (root / f"{stem}.{ext}.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("ext", ["safetensors", "bin"])
def test_the_index_says_which_shard_holds_each_key(ext: str, tmp_path: Path) -> None:
    state = source_state()
    write_indexed(other_state(), tmp_path, 3, ext)  # an older save, sharded otherwise
    write_indexed(state, tmp_path, 2, ext)
    model = lazy_net()
    load_checkpoint(model, tmp_path)
    materialize(model)
    assert_same(eager_reference(state), model)


def test_an_index_naming_a_missing_shard_is_an_error(tmp_path: Path) -> None:
    write_indexed(source_state(), tmp_path, 2, "safetensors")
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.unlink()
    model = lazy_net()
    with pytest.raises(CheckpointError, match=rf"to {re.escape(str(shard))}, which does not exist"):
        load_checkpoint(model, tmp_path)
    assert_recovers(model, tmp_path / "good")


def test_a_key_in_two_files_without_an_index_is_an_error(tmp_path: Path) -> None:
    write("sharded", source_state(), tmp_path)
    save_file({"scale": torch.zeros(16)}, tmp_path / "stale.safetensors")
    first, second = tmp_path / "model-00002-of-00002.safetensors", tmp_path / "stale.safetensors"
    model = lazy_net()
    with pytest.raises(
        CheckpointError,
        match=rf"scale is in both {re.escape(str(first))} and {re.escape(str(second))}, and no "
        "index says which to use",
    ):
        load_checkpoint(model, tmp_path)
    assert is_lazy(model)
    assert_recovers(model, tmp_path / "good")


SEEDED = torch.Generator().manual_seed(0)
RANDOM_BYTES = torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=SEEDED)
NOT_CHECKPOINTS = {
    "pytorch_model.bin": bytes(RANDOM_BYTES.tolist()),
    "notes.txt": b"this is not a checkpoint\n",
    "model.safetensors": b"{}",
}


@pytest.mark.parametrize("name", sorted(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_is_named_with_the_formats(
    name: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(NOT_CHECKPOINTS[name])
    model = lazy_net()
    with pytest.raises(
        CheckpointError,
        match=rf"{re.escape(str(path))} is not a checkpoint load_checkpoint can read: .*; it "
        r"accepts a safetensors file, .* a torch.save state dict .* torch.distributed.checkpoint",
    ):
        load_checkpoint(model, path)
    assert is_lazy(model)
    assert_recovers(model, tmp_path / "good")


PEAK_PROBE = textwrap.dedent(
    """
    import sys, psutil, torch
    from dormant.cli import peak_rss  # VmHWM: not the parent's peak
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
    print(peak_rss() - before)
    """
)


def test_lazy_load_peaks_near_the_model_size(tmp_path: Path) -> None:
    import os

    state = {f"{i}.weight": torch.randn(2048, 2048) for i in range(16)}
    save_file(state, tmp_path / "m.safetensors")
    del state
    # glibc's allocator as users have it (no MALLOC_* tuning): this peak holds without one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

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


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_both_names_of_a_tied_weight_with_different_values_are_an_error(
    fmt: str, tmp_path: Path
) -> None:
    state = dict(source_state())
    state["head.weight"] = state["embed.weight"] + 1  # untied in the file
    if fmt == "safetensors":
        save_file(state, tmp_path / "model.safetensors")
        path = tmp_path / "model.safetensors"
    else:
        torch.save(state, tmp_path / "model.pt")
        path = tmp_path / "model.pt"
    torch.manual_seed(0)
    with LazyInitContext():
        model = Net()
    with pytest.raises(CheckpointError, match=r"'embed\.weight' and 'head\.weight'.*tied"):
        load_checkpoint(model, path)
    materialize(model)
    torch.manual_seed(0)
    assert_same(Net(), model)  # nothing was loaded
    # The same values under both names load, as one tensor.
    state["head.weight"] = state["embed.weight"]
    save_file({k: v.clone() for k, v in state.items()}, tmp_path / "same.safetensors")
    load_checkpoint(model, tmp_path / "same.safetensors")
    assert torch.equal(model.head.weight, state["embed.weight"])
    assert model.head.weight is model.embed.weight


# --- every dtype safetensors writes, extra state, trainer layouts --------------------------------

SAFETENSORS_DTYPES = [
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.complex64,
]


class Typed(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("packed", torch.zeros(6, dtype=dtype))


@pytest.mark.parametrize("dtype", SAFETENSORS_DTYPES, ids=str)
def test_every_dtype_safetensors_writes_loads(dtype: torch.dtype, tmp_path: Path) -> None:
    torch.manual_seed(3)
    bits = torch.randint(0, 120, (6 * dtype.itemsize,), dtype=torch.uint8)
    state = {"lin.weight": torch.randn(4, 4), "lin.bias": torch.randn(4)}
    state["packed"] = bits.view(dtype)
    save_file(state, tmp_path / "m.safetensors")
    with LazyInitContext():
        model = Typed(dtype)
    load_checkpoint(model, tmp_path / "m.safetensors")
    materialize(model)
    assert model.packed.dtype == dtype
    assert torch.equal(model.packed.view(torch.uint8), bits)  # bit for bit
    assert torch.equal(model.lin.weight, state["lin.weight"])


class WithExtraState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.inner = Counter()


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.scale = torch.ones(2)

    def get_extra_state(self) -> object:
        return {"steps": self.steps, "scale": self.scale}

    def set_extra_state(self, state: object) -> None:
        assert isinstance(state, dict)
        self.steps, self.scale = state["steps"], state["scale"]


def test_extra_state_is_restored_as_load_state_dict_does(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = WithExtraState()
    source.inner.steps, source.inner.scale = 7, torch.tensor([3.0, 4.0])
    torch.save(source.state_dict(), tmp_path / "model.pt")
    eager = WithExtraState()
    eager.load_state_dict(torch.load(tmp_path / "model.pt"))
    with LazyInitContext():
        model = WithExtraState()
    result = load_checkpoint(model, tmp_path / "model.pt")
    assert "inner._extra_state" in result.loaded
    materialize(model)
    assert_same(eager, model)
    assert model.inner.steps == 7 and torch.equal(model.inner.scale, torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize(
    ("layout", "found"),
    [
        ("trainer", "'state_dict.'"),  # {"state_dict": ..., "epoch": n}
        ("ddp", "'module.'"),  # DistributedDataParallel's prefix
        ("both", "'model.module.'"),
    ],
)
def test_trainer_layouts_load_and_say_what_was_found(
    layout: str, found: str, tmp_path: Path
) -> None:
    state = source_state()
    ddp = {f"module.{k}": v for k, v in state.items()}
    saved = {
        "trainer": {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}},
        "ddp": ddp,
        "both": {"model": ddp, "step": 10},
    }[layout]
    torch.save(saved, tmp_path / "ckpt.pt")
    model = lazy_net()
    result = load_checkpoint(model, tmp_path / "ckpt.pt")
    assert found in result.layout
    materialize(model)
    assert_same(eager_reference(state), model)


def test_a_checkpoint_with_no_key_of_the_model_is_an_error_even_when_not_strict(
    tmp_path: Path,
) -> None:
    save_file(
        {"encoder.w": torch.zeros(2), "decoder.w": torch.zeros(2)}, tmp_path / "m.safetensors"
    )
    model = lazy_net()
    with pytest.raises(CheckpointError, match=r"holds no key of the model.*'decoder\.w'.*'body"):
        load_checkpoint(model, tmp_path / "m.safetensors", strict=False)
    assert is_lazy(model)
