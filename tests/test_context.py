"""LazyInitContext: nesting, threads, exceptions, default_device."""

from __future__ import annotations

import gc
import threading

import pytest
import torch
from helpers import assert_same, rng_unchanged
from torch import nn

from dormant import LazyInitContext, LazyTensor, is_lazy, materialize


def test_nested_context_joins_the_outer_one() -> None:
    with LazyInitContext():
        with LazyInitContext():
            inner = torch.zeros(2)
        after_inner = torch.zeros(2)  # still recording
    assert isinstance(inner, LazyTensor) and isinstance(after_inner, LazyTensor)
    assert type(torch.zeros(2)) is torch.Tensor


def test_nested_context_with_other_options_is_refused() -> None:
    with (
        LazyInitContext(),
        pytest.raises(RuntimeError, match="nested LazyInitContext"),
        LazyInitContext(rng="fast"),
    ):
        pass
    assert type(torch.zeros(2)) is torch.Tensor


def test_second_thread_cannot_record_at_the_same_time() -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with LazyInitContext():
                pass
        except RuntimeError as e:
            errors.append(e)

    with LazyInitContext():
        t = threading.Thread(target=other)
        t.start()
        t.join()
        made_here = torch.ones(1)
    assert errors and "another thread" in str(errors[0])
    assert isinstance(made_here, LazyTensor)


def test_other_threads_build_real_tensors_while_one_records() -> None:
    made: list[torch.Tensor] = []
    with LazyInitContext():
        t = threading.Thread(target=lambda: made.append(torch.ones(2)))
        t.start()
        t.join()
    assert type(made[0]) is torch.Tensor


def test_exception_in_model_code_leaves_torch_and_rng_as_before() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ok = nn.Linear(3, 3)
            raise ValueError("bad config")

    torch.manual_seed(0)
    with rng_unchanged(), pytest.raises(ValueError, match="bad config"), LazyInitContext():
        Broken()
    assert type(torch.zeros(1)) is torch.Tensor
    with LazyInitContext():  # usable again
        m = nn.Linear(2, 2)
    assert is_lazy(materialize(m)) is False


def test_garbage_collection_settings_come_back_after_the_context() -> None:
    # Recording holds off full collections (its graph cannot be freed before materialize).
    before = gc.get_threshold()
    try:
        gc.set_threshold(500, 7, 9)
        with LazyInitContext():
            nn.Linear(2, 2)
            inside = gc.get_threshold()
        assert gc.get_threshold() == (500, 7, 9)
        assert inside[:2] == (500, 7), "young collections go on while recording"
        with pytest.raises(ValueError), LazyInitContext():
            raise ValueError("model code failed")
        assert gc.get_threshold() == (500, 7, 9)
    finally:
        gc.set_threshold(*before)


def test_shape_errors_are_raised_as_eager_raises_them() -> None:
    with pytest.raises(RuntimeError) as eager:
        torch.ones(2, 3) @ torch.ones(2, 3)
    with LazyInitContext(), pytest.raises(type(eager.value)) as lazy:
        torch.ones(2, 3) @ torch.ones(2, 3)
    assert "2, 3" in str(lazy.value)  # the meta kernel words it differently, same error type


def test_default_device_parsing() -> None:
    assert LazyInitContext().default_device == torch.device("cpu")
    assert LazyInitContext("cpu").default_device == torch.device("cpu")
    assert LazyInitContext(torch.device("cpu")).default_device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_default_device_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        LazyInitContext(default_device="cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        LazyInitContext(default_device=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_default_device_equals_eager_on_cuda() -> None:
    def build() -> nn.Module:
        m = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64))
        nn.init.trunc_normal_(m[0].weight, std=0.02)
        return m

    torch.manual_seed(0)
    with torch.device("cuda"):
        eager = build()
    torch.manual_seed(0)
    cuda_state = torch.cuda.get_rng_state()
    with LazyInitContext(default_device="cuda"):
        lazy = build()
    assert lazy[0].weight.device.type == "cuda"
    materialize(lazy)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert_same(eager, lazy)


def test_meta_default_device_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"default_device='meta'.*materialize cannot fill"):
        LazyInitContext(default_device="meta")


def test_recording_does_not_import_dynamo() -> None:
    # PyTorch wraps a dispatch mode in torch._dynamo.disable unless the mode opts out; the
    # wrapper imports torch._dynamo at the first op (about 1 s and 70 MiB), and costs every op.
    import subprocess
    import sys

    code = (
        "import sys, torch, dormant\n"
        "with dormant.LazyInitContext():\n"
        "    m = torch.nn.Linear(4, 4)\n"
        "dormant.materialize(m)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
