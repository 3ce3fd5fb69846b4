"""What :meth:`clustergnn.engine.Engine.apply` returns: per layer, what changed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LayerDelta:
    """What one layer did in one batch.

    Attributes:
        layer: output index ``l`` (1..L): the cache ``h_l`` this entry describes.
        affected: rows finished (recomputed or delta-updated) in this layer.
        changed_ids: external ids whose ``h_l`` changed bit-for-bit.
        deferred: collaborative last layer: finished at read time; ids are rows whose inputs changed.
        changed_slots: the local slots of ``changed_ids``.
    """

    layer: int
    affected: int
    changed_ids: np.ndarray
    deferred: bool = False
    changed_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)


@dataclass(frozen=True)
class ApplyResult:
    """One applied batch: its size, each layer's :class:`LayerDelta`, the vertices added and removed,
    the vertices whose features were updated, and the wall time of ``apply``."""

    num_mutations: int
    layers: list[LayerDelta]
    added_ids: np.ndarray
    removed_ids: np.ndarray
    feature_changed_ids: np.ndarray
    seconds: float = 0.0

    @property
    def affected_per_layer(self) -> list[int]:
        return [d.affected for d in self.layers]

    @property
    def changed_per_layer(self) -> list[int]:
        return [len(d.changed_ids) for d in self.layers]
