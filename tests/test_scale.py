"""One rank of a large world at a time: exact shards at 8, 64 and 1,024 ranks.

PyTorch's fake process group (backend ``"fake"``) lets one process be rank ``r`` of a world of
any size: collectives do nothing, but device meshes, FSDP2 and DTensor shard exactly as they
would on a real cluster. Each case runs in a fresh subprocess (a process group is per process)
that boosts a lazily built model with every layout of :data:`LAYOUTS` and compares each local
shard with the same rows of an eager single-process build from the same seed, ``torch.equal``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

TESTS = Path(__file__).resolve().parent
SEED = 2026


def llama(tied: bool = True) -> nn.Module:
    """A tiny Llama whose larger tensors (embedding, MLP) exceed 2**16 elements, the most that
    sharded placement draws whole and slices, so ranks place the generator for their own rows
    (see [Note: windows]); MLP rows of 1090 elements start off the 16-element blocks of
    ``normal_``; tied embeddings unless ``tied`` is False (pipeline stages hold the embeddings
    and the head apart)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=1090,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def _boost(make_plugin: Callable[[], Any]) -> Callable[[nn.Module], nn.Module]:
    def apply(model: nn.Module) -> nn.Module:
        from dormant.booster import Booster

        plugin = make_plugin()
        boosted, *_ = Booster(plugin=plugin).boost(model)
        return plugin.unwrap(boosted)

    return apply


def _plugin(name: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        from dormant.booster import plugin

        return getattr(plugin, name)(**kwargs)

    return make


def _user_fsdp(model: nn.Module) -> nn.Module:
    """The user's own FSDP2 (torchtitan's recipe), then ``dormant.materialize``."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import dormant

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return dormant.materialize(model)


def _user_tp_fsdp(model: nn.Module) -> nn.Module:
    """The user's own tensor parallelism on 2 ranks times FSDP2 on the rest (a 2-D mesh)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    import dormant

    mesh = init_device_mesh("cpu", (dist.get_world_size() // 2, 2), mesh_dim_names=("dp", "tp"))
    plan = {"self_attn.q_proj": ColwiseParallel(), "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(), "self_attn.o_proj": RowwiseParallel(),
            "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel()}  # fmt: skip
    for block in model.model.layers:
        parallelize_module(block, mesh["tp"], plan)
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return dormant.materialize(model)


def _user_hsdp(model: nn.Module) -> nn.Module:
    """The user's own HSDP: FSDP2 on a 2-D mesh, replicated over 2 groups, sharded in each."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import dormant

    shape = (2, dist.get_world_size() // 2)
    mesh = init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard"))
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return dormant.materialize(model)


@dataclass(frozen=True)
class Layout:
    """A way of sharding a lazy model: ``shard(model)`` runs on each rank under an initialized
    process group and returns the module whose parameters and buffers hold the local shards."""

    name: str
    shard: Callable[[nn.Module], nn.Module]
    replicated: bool = False  # every rank holds every tensor whole
    stage: bool = False  # a pipeline stage: the rank holds its stage's tensors only
    tied: bool = True  # the model's embeddings and head are one tensor
    halves: bool = False  # FSDP2 shards over half the ranks (HSDP's 2 replicas, 2 stages)


# One entry per layout: the Booster's plugins, and the user's own sharding code followed by
# dormant.materialize.
LAYOUTS = [
    Layout("user_fsdp", _user_fsdp),
    Layout("user_tp_fsdp", _user_tp_fsdp),
    Layout("user_hsdp", _user_hsdp, halves=True),
    Layout("fsdp", _boost(_plugin("TorchFSDPPlugin"))),
    Layout("zero2", _boost(_plugin("LowLevelZeroPlugin", stage=2))),
    Layout("gemini", _boost(_plugin("GeminiPlugin"))),
    Layout("hybrid_tp2", _boost(_plugin("HybridParallelPlugin", tp_size=2))),
    Layout(
        "zero2_hsdp", _boost(_plugin("LowLevelZeroPlugin", stage=2, extra_dp_size=2)), halves=True
    ),
    Layout(
        "hybrid_pp2",
        _boost(_plugin("HybridParallelPlugin", tp_size=1, pp_size=2)),
        stage=True,
        tied=False,
        halves=True,
    ),
    Layout("ddp", _boost(_plugin("TorchDDPPlugin")), replicated=True),
]

# (world size, rank): the first rank, one past the middle, the last.
CASES = [(w, r) for w in (8, 64, 1024) for r in (0, w // 2 + w // 8 + 1, w - 1)]


def eager_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    return {name: t.detach() for name, t in tensors.items()}


def compare(module: nn.Module, reference: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Each tensor of ``module``: its local part against the same box of ``reference``."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    found = []
    for name, t in eager_tensors(module).items():
        want = reference[name]
        if isinstance(t, DTensor):
            local = t.to_local()
            shape, offset = compute_local_shape_and_global_offset(
                t.shape, t.device_mesh, t.placements
            )
            box = tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))
            expected = want[box]
        else:
            local, shape, offset, expected = t, tuple(t.shape), (0,) * t.dim(), want
        found.append(
            {
                "name": name,
                "sharded": isinstance(t, DTensor),
                "global_shape": list(t.shape),
                "local_shape": list(local.shape),
                "box_shape": list(shape),
                "offset": list(offset),
                "equal": local.shape == expected.shape and torch.equal(local.cpu(), expected),
            }
        )
    return found


def rank_main(world: int, rank: int, reference_path: str, out_path: str) -> None:
    """Runs in the subprocess: one rank of ``world`` on the fake process group."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from dormant import LazyInitContext, is_lazy

    torch.set_num_threads(1)
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    references = torch.load(reference_path)
    results: dict[str, Any] = {}
    for layout in LAYOUTS:
        torch.manual_seed(SEED)
        with LazyInitContext():
            model = llama(layout.tied)
        module = layout.shard(model)
        reference = references[layout.tied]
        results[layout.name] = {"tensors": compare(module, reference), "lazy": is_lazy(module)}
    dist.destroy_process_group()
    Path(out_path).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[bool, dict[str, torch.Tensor]]]:
    """The eager builds (tied embeddings and not), once, in this process; saved for the rank
    subprocesses."""
    references = {}
    for tied in (True, False):
        torch.manual_seed(SEED)
        references[tied] = eager_tensors(llama(tied))
    path = tmp_path_factory.mktemp("scale") / "eager.pt"
    torch.save(references, path)
    return path, references


def run_rank(world: int, rank: int, reference_path: Path, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / f"rank{rank}_of_{world}.json"
    call = f"rank_main({world}, {rank}, {str(reference_path)!r}, {str(out)!r})"
    code = f"import test_scale; test_scale.{call}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    if proc.returncode != 0:
        pytest.fail(
            f"rank {rank} of {world} failed (exit {proc.returncode})\n{proc.stderr[-6000:]}"
        )
    return json.loads(out.read_text())


@pytest.mark.parametrize(("world", "rank"), CASES)
def test_local_shards_equal_eager_rows(
    world: int,
    rank: int,
    reference: tuple[Path, dict[bool, dict[str, torch.Tensor]]],
    tmp_path: Path,
) -> None:
    path, references = reference
    results = run_rank(world, rank, path, tmp_path)
    assert sorted(results) == sorted(layout.name for layout in LAYOUTS)
    for layout in LAYOUTS:
        eager = references[layout.tied]
        found = results[layout.name]
        tensors = {t["name"]: t for t in found["tensors"]}
        assert not found["lazy"], f"{layout.name}: lazy tensors left"
        if layout.stage:  # its stage's layers, and the embeddings or the head
            assert set(tensors) < set(eager), f"{layout.name}: other tensors than eager's"
            ends = {"model.embed_tokens.weight", "lm_head.weight"} & set(tensors)
            assert len(ends) == 1 and any(".layers." in n for n in tensors), sorted(tensors)
        else:
            assert sorted(tensors) == sorted(eager), f"{layout.name}: other tensors than eager's"
        wrong = [n for n, t in tensors.items() if not t["equal"]]
        assert wrong == [], f"{layout.name}, rank {rank} of {world}: not eager's rows: {wrong}"
        for name, t in tensors.items():
            assert t["global_shape"] == list(eager[name].shape), name
            assert t["local_shape"] == t["box_shape"], f"{name}: local part is not its box"
        sharded = [t for t in tensors.values() if t["sharded"]]
        if layout.replicated:
            assert sharded == [], f"{layout.name}: replicated, yet sharded: {sharded}"
            continue
        # Every parameter is sharded; a rank holds at most its share of each, never more.
        params = [n for n in tensors if "inv_freq" not in n]
        assert sorted(t["name"] for t in sharded) == sorted(params), layout.name
        for t in sharded:
            rows = t["global_shape"][0]
            assert t["local_shape"][0] <= -(-rows // (world // 2)), t
        if world >= (128 if layout.halves else 64) and rank > 0:
            # Some of this rank's shards are empty (64 rows over 64 or more shard ranks run out
            # before it, or before the last rank), others are not: both cases were compared.
            empty = [t["name"] for t in sharded if 0 in t["local_shape"]]
            assert empty and len(empty) < len(sharded), (layout.name, empty)
