"""Booster and plugins in one process: arguments and errors (2 ranks: test_booster_ranks.py)."""

from __future__ import annotations

import re
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

import dormant
from dormant import LazyInitContext, is_lazy
from dormant.booster import Booster
from dormant.booster.plugin import (
    GeminiPlugin,
    HybridParallelPlugin,
    LowLevelZeroPlugin,
    Plugin,
    TorchDDPPlugin,
    TorchFSDPPlugin,
)
from dormant.errors import DormantError


def one_rank_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's environment for one rank (launch() would leave it set for later tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": port}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def one_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process group of world size 1 in this process, destroyed after the test."""
    one_rank_env(monkeypatch)
    dormant.launch()
    yield
    torch.distributed.destroy_process_group()


def stack() -> nn.Module:
    """Two lazy blocks in a ModuleList, which the FSDP plugins shard one by one."""

    def block() -> nn.Module:
        return nn.Sequential(OrderedDict(up=nn.Linear(4, 8), act=nn.ReLU(), down=nn.Linear(8, 4)))

    with LazyInitContext():
        return nn.Sequential(OrderedDict(layers=nn.ModuleList([block(), block()])))


def stack_plan() -> dict[str, Any]:
    return {"layers.*.up": ColwiseParallel(), "layers.*.down": RowwiseParallel()}


ONE_RANK_PLUGINS: dict[str, Callable[[], Plugin]] = {
    "ddp": TorchDDPPlugin,
    "fsdp": TorchFSDPPlugin,
    "zero1": lambda: LowLevelZeroPlugin(stage=1),
    "zero2": lambda: LowLevelZeroPlugin(stage=2),
    "gemini": GeminiPlugin,
    "hybrid": lambda: HybridParallelPlugin(tp_size=1, tp_plan=stack_plan()),
}


PLUGIN_LIST = (
    "(TorchDDPPlugin(), TorchFSDPPlugin(), LowLevelZeroPlugin(stage=2), GeminiPlugin(), "
    "HybridParallelPlugin(tp_size=...))"
)


@pytest.mark.parametrize(
    ("plugin", "got"),
    [
        ("fsdp", "got 'fsdp' (str): pass one of them, e.g. "
         "Booster(plugin=dormant.booster.plugin.TorchFSDPPlugin())"),
        (TorchFSDPPlugin, "got the class TorchFSDPPlugin: pass Booster(plugin=TorchFSDPPlugin())"),
        (nn.Linear(2, 2), "got Linear(in_features=2, out_features=2, bias=True) (Linear): pass"),
    ],
)  # fmt: skip
def test_booster_names_what_is_not_a_plugin(plugin: object, got: str) -> None:
    expected = (
        f"Booster(plugin=...) takes a plugin object from dormant.booster.plugin {PLUGIN_LIST}"
    )
    with pytest.raises(TypeError, match=re.escape(f"{expected}, {got}")):
        Booster(plugin=plugin)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error", "got"),
    [
        (torch.bfloat16, TypeError, "got torch.bfloat16 (dtype): pass mixed_precision='bf16'"),
        ("FP16", ValueError, "got 'FP16' (str): pass mixed_precision='fp16'"),
        (True, TypeError, "got True (bool): pass 'fp32', 'bf16' or 'fp16'"),
    ],
)
def test_booster_names_the_mixed_precision_to_pass(
    value: object, error: type[Exception], got: str
) -> None:
    with pytest.raises(error, match=re.escape(f"takes None, 'fp32', 'bf16' or 'fp16', {got}")):
        Booster(plugin=TorchFSDPPlugin(), mixed_precision=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (None, "TorchDDPPlugin does not apply mixed_precision='bf16'; use torch.autocast"),
        (GeminiPlugin(precision="fp16"), "Booster(mixed_precision='bf16') and "
         "GeminiPlugin(precision='fp16') disagree: name the precision once, on the plugin"),
    ],
)  # fmt: skip
def test_precision_the_plugin_cannot_apply_is_refused_when_the_booster_is_made(
    plugin: Plugin | None, expected: str
) -> None:
    with pytest.raises(DormantError, match=re.escape(expected)):
        Booster(plugin=plugin, mixed_precision="bf16")


def test_tp_plan_keys_matching_no_module_are_named_before_sharding(one_rank: None) -> None:
    model = stack()
    plan = {
        "up": ColwiseParallel(),  # the path from the root is missing
        "layers.*.mlp.down": RowwiseParallel(),  # a component that does not exist
        "layers.0.up.weight": ColwiseParallel(),  # a parameter, not a module
        **stack_plan(),
    }
    expected = (
        "tp_plan key(s) matching no module of Sequential, so nothing would be split by them: "
        "'up' has no 'up' under the root (there: layers), modules named 'up': layers.0.up, "
        "layers.1.up; 'layers.*.mlp.down' has no 'mlp' under 'layers.*' (there: layers.0.up, "
        "layers.0.act, layers.0.down, layers.1.up, layers.1.act, layers.1.down), modules named "
        "'down': layers.0.down, layers.1.down; 'layers.0.up.weight' has no 'weight' under "
        "'layers.0.up' (there: none), 'weight' is not a module: keys end at the module to split. "
        "Keys are module paths"
    )
    with pytest.raises(DormantError, match=re.escape(expected)):
        Booster(plugin=HybridParallelPlugin(tp_size=1, tp_plan=plan)).boost(model)
    assert is_lazy(model)  # nothing was sharded or computed
    assert not any(isinstance(p, DTensor) for p in model.parameters())


@pytest.mark.parametrize("name", ONE_RANK_PLUGINS)
def test_boosting_a_boosted_model_or_its_wrapper_says_so(one_rank: None, name: str) -> None:
    model = stack()
    boosted, *_ = Booster(plugin=ONE_RANK_PLUGINS[name]()).boost(model)
    for again in (model, boosted):  # DDP plugins return a wrapper: DDP(DDP(model)) otherwise
        with pytest.raises(DormantError, match=rf"^{type(again).__name__} was already boosted"):
            Booster(plugin=ONE_RANK_PLUGINS[name]()).boost(again)


def test_fp32_is_accepted_by_every_plugin(one_rank: None) -> None:
    booster = Booster(plugin=TorchDDPPlugin(), mixed_precision="fp32")
    model, *_ = booster.boost(stack())
    assert not is_lazy(model)
    plugin = GeminiPlugin()
    Booster(plugin=plugin, mixed_precision="fp32")
    assert plugin.precision.param_dtype is None and plugin.precision.loss_scale is None


def test_launch_takes_the_peer_api_config_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match=r"takes no config dict, got keys \['seed'\]"):
        dormant.launch({"seed": 1})
    assert not torch.distributed.is_initialized()
    one_rank_env(monkeypatch)
    dormant.launch({})  # the source document's colossalai.launch({})
    try:
        assert torch.distributed.get_world_size() == 1
    finally:
        torch.distributed.destroy_process_group()


def test_an_optimizer_over_parameters_boost_does_not_see_is_refused(one_rank: None) -> None:
    model = stack()
    stray = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([*model.parameters(), stray], lr=0.1)
    with pytest.raises(DormantError, match="no longer has"):
        Booster(plugin=TorchFSDPPlugin()).boost(model, optimizer)
