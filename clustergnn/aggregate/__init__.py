"""One module per aggregation family, each with its incremental update, its recompute and (where
there is one) its fused CPU variant side by side: :mod:`.sum`, :mod:`.max`, :mod:`.attention`.
Shared types are in :mod:`.base`."""

from __future__ import annotations

from clustergnn.aggregate.base import Aggregation, BatchContext, DeltaStep, FinishKind

__all__ = ["Aggregation", "BatchContext", "DeltaStep", "FinishKind"]
