"""Small modules, each built around one pattern that lazy initialization must get right."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class TwoLazyOperands(nn.Module):
    """In-place ops whose source is lazy too (HF Whisper's ``embed_positions.copy_(...)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Embedding(16, 8)
        with torch.no_grad():
            self.pos.weight.copy_(torch.randn(16, 8).cumsum(0))
        self.register_buffer("acc", torch.ones(8))
        self.acc.add_(self.pos.weight[3])
        self.acc.mul_(self.pos.weight[5].sigmoid())


class DataFromItself(nn.Module):
    """``.data`` assigned from an expression of itself (HF ViT's init)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8, dtype=torch.bfloat16)
        w = self.proj.weight
        w.data = nn.init.trunc_normal_(w.data.to(torch.float32), std=0.02).to(w.dtype)
        self.proj.bias.data = self.proj.bias.data * 2 + 1


class WritesThroughViews(nn.Module):
    """Writes through views and slices (``w.t().zero_()``, ``w[idx].zero_()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.a.weight.data.t()[1:3].zero_()
        self.emb = nn.Embedding(10, 4, padding_idx=2)  # zeroes weight[2] through a slice
        self.u = nn.Parameter(torch.empty(4))
        self.u.data.view(2, 2)[1].fill_(5.0)
        self.u.data[:2].normal_()
        self.b = nn.Parameter(torch.zeros(3, 5))
        self.b.data[:, 1::2].uniform_(-1, 1)
        self.b.data.diagonal().add_(7)


class LibraryInit(nn.Module):
    """Every torch.nn.init function, the data-dependent ones included."""

    def __init__(self) -> None:
        super().__init__()
        shapes = {
            "uniform_": (5, 4),
            "normal_": (5, 4),
            "trunc_normal_": (9, 7),
            "constant_": (3,),
            "ones_": (3,),
            "zeros_": (3,),
            "eye_": (4, 6),
            "dirac_": (6, 2, 3, 3),
            "xavier_uniform_": (5, 4),
            "xavier_normal_": (5, 4),
            "kaiming_uniform_": (5, 4),
            "kaiming_normal_": (5, 4),
            "orthogonal_": (6, 4),
            "sparse_": (6, 5),
        }
        args = {"constant_": (0.5,), "sparse_": (0.5,)}
        for name, shape in shapes.items():
            p = nn.Parameter(torch.empty(shape))
            getattr(nn.init, name)(p, *args.get(name, ()))
            self.register_parameter(name.rstrip("_"), p)
        self.trunc_narrow = nn.Parameter(torch.empty(50))
        nn.init.trunc_normal_(self.trunc_narrow, mean=0.0, std=1.0, a=-0.1, b=0.1)
        self.trunc_half = nn.Parameter(torch.empty(40, dtype=torch.float16))
        nn.init.trunc_normal_(self.trunc_half, std=0.02)


class Reparametrized(nn.Module):
    """Weight norm (old and new API), spectral norm and a custom parametrization."""

    class Symmetric(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.triu() + x.triu(1).transpose(-1, -2)

    def __init__(self) -> None:
        super().__init__()
        self.new_wn = nn.utils.parametrizations.weight_norm(nn.Linear(5, 4))
        self.old_wn = nn.utils.weight_norm(nn.Linear(5, 4))
        self.sn = nn.utils.parametrizations.spectral_norm(nn.Linear(5, 4))
        self.sym = nn.Linear(4, 4)
        parametrize.register_parametrization(self.sym, "weight", self.Symmetric())


class Tied(nn.Module):
    """Tied weights across modules and a buffer computed at init."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight
        inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.int64).float() / 8))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("count", torch.tensor(3))


class Attributes(nn.Module):
    """Tensors held as plain attributes, in lists and in dicts (GPT-J's ``embed_positions``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.embed_positions = torch.randn(6, 2)
        self.table = [torch.rand(2), torch.arange(4)]
        self.named = {"scale": torch.full((2,), 0.5), "noise": torch.randn(3)}
        self.view_attr = self.lin.weight.data.t()


class RandomOrder(nn.Module):
    """Random tensors created and thrown away, explicit generators, and a reseed in the middle."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        torch.randn(11)  # eager consumed these numbers: later values depend on them
        torch.empty(7).uniform_()
        g = torch.Generator().manual_seed(1234)
        self.from_gen = nn.Parameter(torch.randn(5, generator=g))
        self.from_gen_init = nn.Parameter(torch.empty(3, 3))
        nn.init.trunc_normal_(self.from_gen_init, generator=g)
        self.second = nn.Linear(4, 4)
        torch.manual_seed(99)
        self.after_seed = nn.Linear(4, 4)
        self.perm = nn.Parameter(torch.randperm(9).float(), requires_grad=False)
        self.bern = nn.Parameter(torch.bernoulli(torch.full((6,), 0.5)), requires_grad=False)
        self.mask = nn.Parameter(F.dropout(torch.ones(8), 0.5), requires_grad=False)


class Factories(nn.Module):
    """Every spelling of tensor creation, as buffers."""

    def __init__(self) -> None:
        super().__init__()
        made = {
            "tensor": torch.tensor([1.0, 2.0]),
            "as_tensor": torch.as_tensor([1, 2, 3]),
            "from_numpy": torch.from_numpy(np.arange(4.0)),
            "legacy_tensor": torch.Tensor(2, 3).fill_(1.5),
            "legacy_1d": torch.Tensor(4).uniform_(),
            "legacy_3d": torch.Tensor(2, 3, 4).normal_(),
            "legacy_list": torch.Tensor([1.0, 2.0]),
            "legacy_float": torch.FloatTensor(2, 3).normal_(),
            "legacy_long": torch.LongTensor([4, 5]),
            "empty_strided": torch.empty_strided((2, 3), (1, 2)).uniform_(),
            "normal": torch.normal(0.0, 1.0, (4,)),
            "normal_tensor": torch.normal(torch.zeros(3), torch.ones(3)),
            "eye": torch.eye(3),
            "arange": torch.arange(2, 11, 3),
            "linspace": torch.linspace(0, 1, 7),
            "logspace": torch.logspace(0, 2, 3),
            "randperm": torch.randperm(8),
            "randint": torch.randint(0, 10, (5,)),
            "rand": torch.rand(2, 2),
            "full": torch.full((2,), 7),
            "zeros_like": torch.zeros_like(torch.empty(3)),
            "ones_like": torch.ones_like(torch.empty(3)),
            "randn_like": torch.randn_like(torch.empty(4)),
            "rand_like": torch.rand_like(torch.empty(4)),
            "new_ones": torch.empty(2).new_ones(3),
            "scalar": torch.scalar_tensor(3.0),
            "complex": torch.randn(3, dtype=torch.complex64),
            "float64": torch.randn(3, dtype=torch.float64),
            "halved": torch.randn(5).half(),
            "mask": torch.rand(4) > 0.5,
        }
        for name, t in made.items():
            self.register_buffer(name, t)


class DataDependent(nn.Module):
    """Model code that reads values while building (drop-path rates, Python ``if``)."""

    def __init__(self) -> None:
        super().__init__()
        rates = [x.item() for x in torch.linspace(0, 0.3, 4)]
        self.rates = rates
        self.lin = nn.Linear(4, 4)
        self.positive = bool(self.lin.weight.sum() > 0)
        if self.lin.bias.max().item() > 0:
            self.lin.bias.data.mul_(0.5)
        self.listed = self.lin.weight[0].tolist()
        self.as_numpy = self.lin.bias.detach().numpy().copy()
        self.text = repr(torch.arange(3) * 2)
        self.int_value = int(torch.tensor(41) + 1)


class Recurrent(nn.Module):
    """Recurrent layers, which hold weak references to their weights."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(12, 3)


PATTERNS = [
    Recurrent,
    TwoLazyOperands,
    DataFromItself,
    WritesThroughViews,
    LibraryInit,
    Reparametrized,
    Tied,
    Attributes,
    RandomOrder,
    Factories,
    DataDependent,
]
