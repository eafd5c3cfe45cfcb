"""Model zoo: torchrec's unsharded modules and models (CPU, no process group).

Each module is built eagerly and lazily from the same seed; every parameter and buffer and one
forward output (eval mode, a batch of two with jagged sparse features) must be bit-identical.
The embedding tables are initialized by torchrec's own ``init_fn`` (uniform by default; one
table here uses a custom normal init).
"""

from __future__ import annotations

import functools

import pytest

torchrec = pytest.importorskip("torchrec")

import torch  # noqa: E402
from helpers import ZooCase, check_zoo_case  # noqa: E402
from torchrec import (  # noqa: E402
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    PoolingType,
)
from torchrec.models.deepfm import SimpleDeepFMNN  # noqa: E402
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection  # noqa: E402

LIBRARY = "torchrec"
DIM = 16
DENSE = 13  # as in the Criteo data set DLRM is trained on
FEATURES = ["f1", "f2", "f3"]


def _tables() -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(name="t1", embedding_dim=DIM, num_embeddings=1000, feature_names=["f1"]),
        EmbeddingBagConfig(
            name="t2",
            embedding_dim=DIM,
            num_embeddings=500,
            feature_names=["f2"],
            pooling=PoolingType.MEAN,
        ),
        EmbeddingBagConfig(
            name="t3",
            embedding_dim=DIM,
            num_embeddings=200,
            feature_names=["f3"],
            init_fn=functools.partial(torch.nn.init.normal_, mean=0.0, std=0.02),
        ),
    ]


def _ebc() -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=_tables(), device=torch.device("cpu"))


def _ec() -> EmbeddingCollection:
    tables = [
        EmbeddingConfig(name="t1", embedding_dim=DIM, num_embeddings=1000, feature_names=["f1"]),
        EmbeddingConfig(name="t2", embedding_dim=DIM, num_embeddings=500, feature_names=["f2"]),
        EmbeddingConfig(name="t3", embedding_dim=DIM, num_embeddings=200, feature_names=["f3"]),
    ]
    return EmbeddingCollection(tables=tables, device=torch.device("cpu"))


def _sparse() -> KeyedJaggedTensor:
    # Batch of two; per feature and sample: f1 [1, 2] [3], f2 [] [4, 5, 6], f3 [7] [8, 9].
    return KeyedJaggedTensor.from_lengths_sync(
        keys=FEATURES,
        values=torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9]),
        lengths=torch.tensor([2, 1, 0, 3, 1, 2]),
    )


def _ebc_forward(model: torch.nn.Module) -> object:
    return model(_sparse()).values()


def _ec_forward(model: torch.nn.Module) -> object:
    out = model(_sparse())
    return [out[key].values() for key in FEATURES]


def _dense_forward(model: torch.nn.Module) -> object:
    return model(torch.rand(2, DENSE), _sparse())


CASES: list[ZooCase] = [
    ZooCase("EmbeddingBagCollection", LIBRARY, _ebc, _ebc_forward),
    ZooCase("EmbeddingCollection", LIBRARY, _ec, _ec_forward),
    ZooCase(
        "DLRM",
        LIBRARY,
        lambda: DLRM(
            embedding_bag_collection=_ebc(),
            dense_in_features=DENSE,
            dense_arch_layer_sizes=[64, DIM],
            over_arch_layer_sizes=[64, 32, 1],
        ),
        _dense_forward,
    ),
    ZooCase(
        "DLRM_DCN",
        LIBRARY,
        lambda: DLRM_DCN(
            embedding_bag_collection=_ebc(),
            dense_in_features=DENSE,
            dense_arch_layer_sizes=[64, DIM],
            over_arch_layer_sizes=[64, 32, 1],
            dcn_num_layers=2,
            dcn_low_rank_dim=8,
        ),
        _dense_forward,
    ),
    ZooCase(
        "DLRM_Projection",
        LIBRARY,
        lambda: DLRM_Projection(
            embedding_bag_collection=_ebc(),
            dense_in_features=DENSE,
            dense_arch_layer_sizes=[64, DIM],
            over_arch_layer_sizes=[64, 32, 1],
            interaction_branch1_layer_sizes=[3 * DIM, 4 * DIM],
            interaction_branch2_layer_sizes=[3 * DIM, 4 * DIM],
        ),
        _dense_forward,
    ),
    ZooCase(
        "DeepFM",
        LIBRARY,
        lambda: SimpleDeepFMNN(
            num_dense_features=DENSE,
            embedding_bag_collection=_ebc(),
            hidden_layer_size=32,
            deep_fm_dimension=8,
        ),
        _dense_forward,
    ),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_torchrec(case: ZooCase) -> None:
    check_zoo_case(case)
