"""Habits users bring from eager PyTorch and other tools (issue 23): each ends as eager's
behaviour or a clear error. Every case builds eagerly and lazily from one seed and compares
every tensor and the generator state bit for bit. Habits in the model code itself (failing
inits, compiled and scripted modules, other tensor kinds) are in ``test_habits_model_code.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Callable, Iterator

import pytest
import torch
from helpers import assert_same, eager_and_lazy
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from dormant import (
    DormantError,
    LazyInitContext,
    MaterializationError,
    UnsupportedOpError,
    is_lazy,
    materialize,
)

# --- inits applied after the context --------------------------------------------------------------

_INITS_AFTER: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], object]]] = {
    # ops whose draw count is only known by running them
    "trunc_normal_ default bounds": (
        lambda: nn.Linear(4, 4),
        lambda m: nn.init.trunc_normal_(m.weight),
    ),
    "normal_ on few elements": (lambda: nn.Linear(4, 4), lambda m: m.weight.data[:2, :2].normal_()),
    "normal_ on a strided view": (lambda: nn.Linear(4, 4), lambda m: m.weight.data[:, 0].normal_()),
    "Embedding.reset_parameters": (lambda: nn.Embedding(3, 4), lambda m: m.reset_parameters()),
}


@pytest.mark.parametrize("case", sorted(_INITS_AFTER))
def test_inits_after_the_context_equal_eager(case: str) -> None:
    ctor, init = _INITS_AFTER[case]
    eager, lazy = eager_and_lazy(ctor, init)
    materialize(lazy)
    assert_same(eager, lazy)


# The class these stand for: every in-place init on parameters of every kind of shape, after
# the context (combinations eager refuses, or where the init does nothing, are left out).
_INIT_FUNCTIONS: dict[str, Callable[[torch.Tensor], object]] = {
    "uniform_": nn.init.uniform_,
    "normal_": nn.init.normal_,
    "trunc_normal_": nn.init.trunc_normal_,
    "trunc_normal_ bounded": lambda t: nn.init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04),
    "constant_": lambda t: nn.init.constant_(t, 0.3),
    "ones_": nn.init.ones_,
    "zeros_": nn.init.zeros_,
    "xavier_uniform_": nn.init.xavier_uniform_,
    "xavier_normal_": nn.init.xavier_normal_,
    "kaiming_uniform_": nn.init.kaiming_uniform_,
    "kaiming_normal_": nn.init.kaiming_normal_,
    "orthogonal_": nn.init.orthogonal_,
    "bernoulli_": lambda t: t.data.bernoulli_(0.3),
    "exponential_": lambda t: t.data.exponential_(),
    "random_": lambda t: t.data.random_(0, 10),
    "cauchy_": lambda t: t.data.cauchy_(),
    "log_normal_": lambda t: t.data.log_normal_(),
    "geometric_": lambda t: t.data.geometric_(0.3),
    "normal_ on a row": lambda t: t.data[0].normal_(),
    "uniform_ strided": lambda t: t.data[::2].uniform_(),
    "copy_ of randn": lambda t: t.data.copy_(torch.randn(t.shape)),
    ".data = randn_like": lambda t: setattr(t, "data", torch.randn_like(t)),
    "mul_ then add_": lambda t: t.data.mul_(2).add_(1),
}
_SHAPE_ONLY_INITS = {"eye_": nn.init.eye_, "sparse_": lambda t: nn.init.sparse_(t, 0.5)}
_INIT_SHAPES = {"3x4": (3, 4), "64x300": (64, 300), "10": (10,), "conv 4x2x3x3": (4, 2, 3, 3)}
_NEEDS_2D = {"xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"}
_INIT_CASES = [
    (init, shape)
    for init in [*_INIT_FUNCTIONS, *_SHAPE_ONLY_INITS]
    for shape in _INIT_SHAPES
    if not (shape == "10" and (init in _NEEDS_2D or init == "orthogonal_"))
    and not (init in _SHAPE_ONLY_INITS and len(_INIT_SHAPES[shape]) != 2)
] + [("dirac_", "conv 4x2x3x3")]


@pytest.mark.parametrize(("init", "shape"), _INIT_CASES)
def test_every_init_after_the_context_equals_eager(init: str, shape: str) -> None:
    fn = {**_INIT_FUNCTIONS, **_SHAPE_ONLY_INITS, "dirac_": nn.init.dirac_}[init]

    def ctor() -> nn.Module:
        m = nn.Module()
        m.w = nn.Parameter(torch.empty(_INIT_SHAPES[shape]))
        nn.init.normal_(m.w)
        return m

    eager, lazy = eager_and_lazy(ctor, lambda m: fn(m.w))
    materialize(lazy)
    assert_same(eager, lazy)


_MODULES: dict[str, Callable[[], nn.Module]] = {
    "Linear": lambda: nn.Linear(5, 3),
    "Conv1d": lambda: nn.Conv1d(2, 3, 3),
    "Conv2d": lambda: nn.Conv2d(2, 4, 3),
    "ConvTranspose2d": lambda: nn.ConvTranspose2d(2, 3, 3),
    "Embedding small": lambda: nn.Embedding(3, 4),
    "Embedding padding_idx": lambda: nn.Embedding(20, 8, padding_idx=1),
    "EmbeddingBag": lambda: nn.EmbeddingBag(10, 4),
    "Bilinear": lambda: nn.Bilinear(3, 4, 2),
    "LayerNorm": lambda: nn.LayerNorm(6),
    "BatchNorm1d": lambda: nn.BatchNorm1d(5),
    "GroupNorm": lambda: nn.GroupNorm(2, 4),
    "RMSNorm": lambda: nn.RMSNorm(4),
    "MultiheadAttention": lambda: nn.MultiheadAttention(8, 2),
    "LSTM": lambda: nn.LSTM(4, 5, 2),
    "GRU": lambda: nn.GRU(3, 4),
    "TransformerEncoderLayer": lambda: nn.TransformerEncoderLayer(8, 2, 16),
    "PReLU": lambda: nn.PReLU(3),
}
_WITH_MATRIX_WEIGHT = ["Linear", "Conv1d", "Conv2d", "ConvTranspose2d", "Embedding small",
                       "Embedding padding_idx", "EmbeddingBag", "Bilinear"]  # fmt: skip
_AFTER: dict[str, Callable[[nn.Module], object]] = {
    "reset_parameters": lambda m: [
        sub.reset_parameters() for sub in m.modules() if hasattr(sub, "reset_parameters")
    ],
    "weight_norm": nn.utils.parametrizations.weight_norm,
    "spectral_norm": nn.utils.parametrizations.spectral_norm,
}


@pytest.mark.parametrize(
    ("module", "after"),
    [(m, "reset_parameters") for m in _MODULES]
    + [(m, a) for m in _WITH_MATRIX_WEIGHT for a in ("weight_norm", "spectral_norm")],
)
def test_module_inits_after_the_context_equal_eager(module: str, after: str) -> None:
    eager, lazy = eager_and_lazy(_MODULES[module], _AFTER[after])
    materialize(lazy)
    assert_same(eager, lazy)


# --- hooks, gradients and attributes set on lazy parameters ---------------------------------------


def _train_step(m: nn.Module) -> list[torch.Tensor | None]:
    m(torch.ones(3, 4)).pow(2).sum().backward()
    return [p.grad for p in m.parameters()]


def test_gradient_hooks_on_lazy_parameters_are_kept() -> None:
    def build_and_hook(calls: list[str]) -> Callable[[nn.Module], object]:
        def hook(m: nn.Module) -> None:
            m.weight.register_hook(lambda g: g * 2)  # changes the gradient accumulated
            m.bias.register_post_accumulate_grad_hook(lambda p: calls.append("post"))
            handle = m.bias.register_hook(lambda g: calls.append("removed"))  # type: ignore[func-returns-value]
            handle.remove()

        return hook

    class Hooked(nn.Module):  # a hook registered in model code, inside the context
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.lin.weight.register_hook(lambda g: g + 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    eager_calls: list[str] = []
    lazy_calls: list[str] = []
    eager, _ = eager_and_lazy(lambda: nn.Linear(4, 4), build_and_hook(eager_calls))
    _, lazy = eager_and_lazy(lambda: nn.Linear(4, 4), build_and_hook(lazy_calls))
    materialize(lazy)
    for e, x in zip(_train_step(eager), _train_step(lazy)):
        assert e is not None and x is not None and torch.equal(e, x)
    assert lazy_calls == eager_calls == ["post"]
    eager, lazy = eager_and_lazy(Hooked)
    materialize(lazy)
    for e, x in zip(_train_step(eager), _train_step(lazy)):
        assert e is not None and x is not None and torch.equal(e, x)


def test_gradients_and_tensor_attributes_of_lazy_parameters_survive() -> None:
    def set_grads(m: nn.Module) -> None:
        m.weight.grad = torch.full((4, 4), 0.5)  # real
        m.bias.grad = torch.ones_like(m.bias)  # lazy outside the context, real in eager
        m.weight.main_grad = torch.zeros_like(m.weight)  # Megatron's habit
        m.weight.scale = torch.ones(1)

    eager, lazy = eager_and_lazy(lambda: nn.Linear(4, 4), set_grads)
    grad = lazy.bias.grad
    assert is_lazy(lazy)
    materialize(lazy)
    assert not is_lazy(lazy)
    assert_same(eager, lazy)  # grads and attributes are compared too
    assert lazy.bias.grad is grad and type(grad) is torch.Tensor
    for name in ("main_grad", "scale"):
        assert type(getattr(lazy.weight, name)) is torch.Tensor
        assert torch.equal(getattr(lazy.weight, name), getattr(eager.weight, name))
    torch.optim.SGD(lazy.parameters(), lr=1.0).step()  # the step sees the gradients
    torch.optim.SGD(eager.parameters(), lr=1.0).step()
    assert_same(eager, lazy)


def test_gradients_stay_on_lazy_parameters_when_materialize_fails() -> None:
    with LazyInitContext():
        model = nn.Linear(2, 2)
    model.weight.grad = torch.ones(2, 2)
    model.bias.grad = torch.ones(2)
    held = model.bias.view(2)  # another reference: the swap of ``bias`` is refused
    with pytest.raises(MaterializationError, match="'bias'"):
        materialize(model)
    assert is_lazy(model.bias) and torch.equal(model.bias.grad, torch.ones(2))
    del held
    materialize(model)  # and again, once the reference is gone
    assert torch.equal(model.bias.grad, torch.ones(2))
    assert torch.equal(model.weight.grad, torch.ones(2, 2))


# --- tensors held in nested containers ------------------------------------------------------------


@dataclasses.dataclass
class _Holder:
    t: torch.Tensor
    more: list[torch.Tensor]


@dataclasses.dataclass(slots=True)
class _Slotted:
    t: torch.Tensor


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.table = {"a": {"b": torch.randn(3)}, "c": [(torch.randn(2), self.lin.weight[0])]}
        self.dc = _Holder(torch.randn(2), [torch.rand(2)])
        self.slotted = _Slotted(torch.arange(3.0))
        self.ns = types.SimpleNamespace(
            t=torch.randn(2), inner=types.SimpleNamespace(u=torch.ones(1))
        )
        self.cycle: list[object] = [torch.zeros(1)]
        self.cycle.append(self.cycle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.table["a"]["b"].sum() + self.ns.inner.u


def test_tensors_in_nested_containers_are_materialized() -> None:
    eager, lazy = eager_and_lazy(_Nested)
    assert is_lazy(lazy)
    materialize(lazy)
    assert not is_lazy(lazy)
    assert_same(eager, lazy)  # every nested tensor, by its path
    assert type(lazy(torch.ones(1, 4))) is torch.Tensor


# --- the caller's modes do not reach replay ------------------------------------------------------


class _ComputedBuffers(nn.Module):
    """Buffers computed at init by ops that autocast, inference mode and the default dtype
    change: matmul, integer true division, softmax, orthogonal_'s QR."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("gram", self.lin.weight @ self.lin.weight.T)
        self.register_buffer("steps", torch.arange(5) / 3)
        self.register_buffer("soft", torch.softmax(torch.randn(4), 0))
        self.conv = nn.Conv2d(2, 2, 3)
        nn.init.orthogonal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


_CALLER_MODES: dict[str, Callable[[], contextlib.AbstractContextManager[object]]] = {
    "autocast bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    "autocast fp16": lambda: torch.autocast("cpu", dtype=torch.float16),
    "inference_mode": torch.inference_mode,
    "no_grad": torch.no_grad,
    "set_grad_enabled(False)": lambda: torch.set_grad_enabled(False),
    "default dtype float64": lambda: _default_dtype(torch.float64),
    "default dtype bfloat16": lambda: _default_dtype(torch.bfloat16),
    "default device meta": lambda: torch.device("meta"),
    "autocast disabled": lambda: torch.autocast("cpu", enabled=False),
    "inference_mode in no_grad": lambda: _stacked(torch.no_grad(), torch.inference_mode()),
    "detect_anomaly": torch.autograd.detect_anomaly,
    "saved_tensors_hooks": lambda: torch.autograd.graph.saved_tensors_hooks(_same, _same),
    "forward AD level": torch.autograd.forward_ad.dual_level,
    "deterministic algorithms": lambda: _deterministic(),
    "a user TorchFunctionMode": lambda: _PassFunctions(),
    "a user TorchDispatchMode": lambda: _PassOps(),
    "sdpa_kernel MATH": lambda: nn.attention.sdpa_kernel(nn.attention.SDPBackend.MATH),
}


def _same(x: object) -> object:
    return x


@contextlib.contextmanager
def _stacked(*modes: contextlib.AbstractContextManager[object]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for mode in modes:
            stack.enter_context(mode)
        yield


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


class _PassFunctions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


class _PassOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", sorted(_CALLER_MODES))
def test_materialize_under_a_caller_mode_gives_eager_values(mode: str) -> None:
    eager, lazy = eager_and_lazy(_ComputedBuffers)
    with _CALLER_MODES[mode]():
        materialize(lazy)
    assert_same(eager, lazy)
    assert not any(t.is_inference() for t in lazy.state_dict().values())
    _train_step(lazy)  # trains: normal tensors, not inference ones
    assert all(p.grad is not None for p in lazy.lin.parameters())


def test_a_model_built_under_another_default_dtype_keeps_it() -> None:
    with _default_dtype(torch.float64):
        eager, lazy = eager_and_lazy(_ComputedBuffers)
    materialize(lazy)
    assert lazy.steps.dtype == torch.float64
    assert_same(eager, lazy)


# --- meta-device habits --------------------------------------------------------------------------


@pytest.mark.parametrize("include_buffers", [False, True])
def test_accelerate_init_empty_weights_around_the_context_is_a_clear_error(
    include_buffers: bool,
) -> None:
    import accelerate

    torch.manual_seed(0)
    with (
        accelerate.init_empty_weights(include_buffers=include_buffers),
        pytest.raises(DormantError, match=r"meta device.*drop the outer context"),
        LazyInitContext(),
    ):
        pass
    with LazyInitContext():  # usable again, and lazy
        m = nn.Linear(2, 2)
    assert is_lazy(m)


def test_meta_device_around_the_context_is_a_clear_error() -> None:
    with torch.device("meta"), pytest.raises(DormantError, match=r"torch\.device\(\"meta\"\)"):
        LazyInitContext().__enter__()
    with LazyInitContext(), torch.device("meta"):  # inside: plain meta modules, as before
        assert nn.Linear(2, 2).weight.is_meta


def test_to_empty_on_a_lazy_model_is_a_clear_error() -> None:
    eager, lazy = eager_and_lazy(lambda: nn.Sequential(nn.Sequential(nn.Linear(3, 3))))
    with pytest.raises(UnsupportedOpError, match=r"to_empty\(\).*dormant\.materialize") as info:
        lazy.to_empty(device="cpu")
    assert info.value.op == "torch.nn.Module.to_empty"
    materialize(lazy)  # the recorded values are kept
    assert_same(eager, lazy)


def test_report_counts_real_and_meta_tensors_as_not_lazy() -> None:
    with LazyInitContext():
        lazy = nn.Linear(2, 2)
    model = nn.Sequential(nn.Linear(2, 2, device="meta"), nn.Linear(2, 2), lazy)
    report = materialize(model, report=True)
    assert (report.lazy_parameters, report.parameters) == (2, 6)
    assert report.lazy_rate == pytest.approx(1 / 3)
    assert report.meta == ["0.weight", "0.bias"]
    assert "on the meta device, without values: 2 tensors (0.weight, 0.bias)" in str(report)


# --- generator state read in model code ----------------------------------------------------------


class _ReadsTheGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        with torch.random.fork_rng():  # draws inside, then gives back the state it saw
            self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4)  # the same values as ``b``, in eager
        self.register_buffer("state", torch.get_rng_state().clone())
        self.register_buffer("seed", torch.tensor(torch.initial_seed()))
        torch.set_rng_state(self.state)  # a state set back: seen as a seed
        self.d = nn.Linear(3, 3)


def test_generator_state_reads_in_model_code_see_eager_state() -> None:
    reads = (torch.get_rng_state, torch.initial_seed, torch.random.get_rng_state)
    eager, lazy = eager_and_lazy(_ReadsTheGenerator)
    materialize(lazy)
    assert_same(eager, lazy)
    assert (torch.get_rng_state, torch.initial_seed, torch.random.get_rng_state) == reads


# --- subclasses of nn.Parameter ----------------------------------------------------------------


class _PlainParam(nn.Parameter):
    pass


class _TaggedParam(nn.Parameter):
    def __new__(cls, data: torch.Tensor, tag: str = "") -> _TaggedParam:
        return super().__new__(cls, data)  # type: ignore[return-value]

    def __init__(self, data: torch.Tensor, tag: str = "") -> None:
        self.tag = tag


class _SubclassedParams(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plain = _PlainParam(torch.randn(3, 4))
        self.tagged = _TaggedParam(torch.rand(5), tag="expert")
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x @ self.plain.T @ self.plain) * self.tagged[:4].sum()


def test_parameter_subclasses_keep_their_class_and_init() -> None:
    eager, lazy = eager_and_lazy(_SubclassedParams)
    assert isinstance(lazy.tagged, _TaggedParam) and lazy.tagged.tag == "expert"  # while lazy
    materialize(lazy)
    assert_same(eager, lazy)
    for name in ("plain", "tagged"):
        assert type(getattr(lazy, name)) is type(getattr(eager, name))
    assert lazy.tagged.tag == "expert"
    _train_step(lazy)
    assert lazy.plain.grad is not None
