"""``clustergnn produce`` with its defaults writes what a cluster with its defaults accepts (issue 12 item 3):
the feature width of its records is the default model's input width, whatever the dataset's own width."""

from __future__ import annotations

import pytest

from actors.cli import build_parser
from clustergnn import datasets
from clustergnn.config import Config
from clustergnn.models import feature_dim, load_layers
from clustergnn.mutations import MutationBatch
from clustergnn.partition import HashPartitionMap, split_by_owner
from streams.wire import DecodedRecord, decode_record, encode_arrow


def default_cluster_feature_dim() -> int:
    """What a default cluster's owners expect (``actors/cluster.py``: the first layer's input width)."""
    return feature_dim(load_layers(Config().model))


@pytest.mark.parametrize(
    ("dataset", "options"),
    [("collegemsg", {}), ("rmat", {"scale": 6, "edge_factor": 2}), ("movielens-100k", {})],
    ids=["seeded-features", "synthetic", "native-features-45"],
)
def test_a_default_producer_is_not_dead_lettered_by_a_default_cluster(dataset: str, options: dict) -> None:
    args = build_parser().parse_args(["produce", "--dataset", dataset, "--bootstrap", "127.0.0.1:1", "--topic", "t"])
    expected = default_cluster_feature_dim()
    assert args.dim == expected, f"produce --dim defaults to {args.dim}; a default cluster reads {expected}"
    graph = datasets.load(dataset, **options)
    # what _produce sends: the initial graph (--with-initial), then the stream, both at args.dim
    batch = MutationBatch.concat([graph.initial_batch(args.dim), next(graph.stream_batches(200, args.dim))])
    assert batch.feature_dim == expected and batch.features.shape[0] > 0
    pm = HashPartitionMap(Config().cluster.partitions)
    for p, part in split_by_owner(batch, pm).items():
        rec = decode_record(encode_arrow(part, compression="lz4"), None, p, pm, expected)
        assert isinstance(rec, DecodedRecord), rec
