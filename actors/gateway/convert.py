"""Conversions between the wire messages of ``clustergnn.v1`` and the serving contract's values.

Both the server and the client use these, so one encoding rule lives in one place.  The encodings
themselves are documented in ``proto/clustergnn/v1/clustergnn.proto``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from actors.gateway._gen import clustergnn_pb2 as pb
from clustergnn.errors import MutationError
from clustergnn.mutations import MutationBatch, MutationKind, feature_kinds_mask
from clustergnn.serving import ClusterStatus, ModelInfo, PartitionStatus, ReadResult

RAW = pb.EMBEDDING_FORMAT_RAW_F32
ARROW = pb.EMBEDDING_FORMAT_ARROW_IPC
_FORMATS = {pb.EMBEDDING_FORMAT_UNSPECIFIED: RAW, RAW: RAW, ARROW: ARROW}


def resolve_format(fmt: int) -> int:
    """The format to answer in; unknown values name the allowed set."""
    try:
        return _FORMATS[fmt]
    except KeyError:
        allowed = {pb.EmbeddingFormat.Name(v): v for v in _FORMATS}
        raise ValueError(f"format must be one of {allowed}, got {fmt}") from None


# ------------------------------------------------------------------------------------ embeddings
def encode_matrix(emb: np.ndarray, ids: np.ndarray, versions: np.ndarray, fmt: int) -> pb.EmbeddingMatrix:
    emb = np.asarray(emb)
    rows, dim = (emb.shape[0], emb.shape[1]) if emb.ndim == 2 else (len(ids), 0)
    if fmt == ARROW:
        return pb.EmbeddingMatrix(rows=rows, dim=dim, format=ARROW, arrow_ipc=_matrix_to_arrow(emb, ids, versions))
    data = np.ascontiguousarray(emb, dtype="<f4").tobytes()
    return pb.EmbeddingMatrix(rows=rows, dim=dim, format=RAW, data=data)


def decode_matrix(m: pb.EmbeddingMatrix) -> np.ndarray:
    """The ``(rows, dim)`` float32 matrix of ``m``, whatever its format."""
    if m.format == ARROW:
        import pyarrow as pa

        table = pa.ipc.open_stream(m.arrow_ipc).read_all()
        col = table.column("embedding").combine_chunks()
        flat = col.values.slice(col.offset * m.dim, len(col) * m.dim).to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(m.rows, m.dim)
    expected = m.rows * m.dim * 4
    if len(m.data) != expected:
        raise ValueError(f"embedding data has {len(m.data)} bytes, expected rows*dim*4 = {expected}")
    return np.frombuffer(m.data, dtype="<f4").reshape(m.rows, m.dim).astype(np.float32, copy=False)


def _matrix_to_arrow(emb: np.ndarray, ids: np.ndarray, versions: np.ndarray) -> bytes:
    import pyarrow as pa

    dim = emb.shape[1] if emb.ndim == 2 else 0
    values = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "vertex_id": pa.array(np.asarray(ids, dtype=np.int64), type=pa.int64()),
            "version": pa.array(np.asarray(versions, dtype=np.int64), type=pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(values, dim),
        }
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def read_result_to_response(res: ReadResult, ids: np.ndarray, fmt: int, now_ms: int) -> pb.GetEmbeddingsResponse:
    return pb.GetEmbeddingsResponse(
        vertex_ids=ids.tolist(),
        versions=np.asarray(res.versions, dtype=np.int64).tolist(),
        embeddings=encode_matrix(res.embeddings, ids, res.versions, fmt),
        staleness_ms=float(res.staleness_ms),
        watermark={int(k): int(v) for k, v in res.watermark.items()},
        layer=int(res.layer),
        answered_at_unix_ms=now_ms,
        model_digest=res.model_digest,
        bound_met=bool(res.bound_met),
    )


def response_to_read_result(resp: pb.GetEmbeddingsResponse | pb.WatchResponse) -> ReadResult:
    """A response as the backend's :class:`ReadResult` (a Watch push has no bound: ``bound_met`` True)."""
    return ReadResult(
        embeddings=decode_matrix(resp.embeddings),
        versions=np.asarray(resp.versions, dtype=np.int64),
        staleness_ms=resp.staleness_ms,
        watermark=dict(resp.watermark),
        layer=resp.layer,
        model_digest=resp.model_digest,
        bound_met=resp.bound_met if isinstance(resp, pb.GetEmbeddingsResponse) else True,
    )


# ------------------------------------------------------------------------------------ mutations
def batch_to_request(batch: MutationBatch, *, arrow: bool = True) -> pb.ApplyRequest:
    """An ApplyRequest carrying ``batch`` as Arrow IPC (default) or as repeated Mutation messages."""
    if arrow:  # the core's one Arrow encoding of a batch (clustergnn.codec; F = 1, all null, without features)
        import pyarrow as pa

        from clustergnn import codec

        rb = codec.encode(batch)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, rb.schema) as writer:
            writer.write_batch(rb)
        return pb.ApplyRequest(arrow_ipc=sink.getvalue())
    rows = batch.feature_row_index()
    feats = batch.features.numpy()
    muts = []
    for i, (k, s, d) in enumerate(zip(batch.kind.tolist(), batch.src.tolist(), batch.dst.tolist())):
        m = pb.Mutation(kind=k + 1, src=s, dst=d)
        if rows[i] >= 0:
            m.features.extend(feats[rows[i]].tolist())
        muts.append(m)
    return pb.ApplyRequest(mutations=muts)


def request_to_batch(req: pb.ApplyRequest, max_mutations: int) -> MutationBatch:
    """The batch an ApplyRequest carries; raises :class:`MutationError` naming what is wrong."""
    has_arrow, has_list = bool(req.arrow_ipc), len(req.mutations) > 0
    if has_arrow == has_list:
        raise MutationError(
            "ApplyRequest must carry exactly one of arrow_ipc or mutations, got "
            f"arrow_ipc={len(req.arrow_ipc)} bytes and {len(req.mutations)} mutations"
        )
    if has_arrow:
        import pyarrow as pa

        try:
            table = pa.ipc.open_stream(req.arrow_ipc).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise MutationError(f"arrow_ipc is not a readable Arrow IPC stream: {e}") from e
        _check_count(table.num_rows, max_mutations)
        from clustergnn import codec

        bad = codec.check_schema(table.schema)  # the wire doc's types exactly (int64 ids), as Kafka records
        if bad is not None:
            raise MutationError(f"arrow_ipc: {bad.message} (docs/wire-format.md)")
        return MutationBatch.from_arrow(table)
    return _mutations_to_batch(req.mutations, max_mutations)


def _check_count(n: int, max_mutations: int) -> None:
    if n > max_mutations:
        raise MutationError(f"request has {n} mutations; at most {max_mutations} allowed")


def _mutations_to_batch(muts: Any, max_mutations: int) -> MutationBatch:
    n = len(muts)
    _check_count(n, max_mutations)
    allowed = [v for v in pb.MutationKind.values() if v != pb.MUTATION_KIND_UNSPECIFIED]
    kind = np.empty(n, dtype=np.int8)
    src = np.empty(n, dtype=np.int64)
    dst = np.empty(n, dtype=np.int64)
    feats: list[list[float]] = []
    for i, m in enumerate(muts):
        if m.kind not in allowed:
            raise MutationError(f"mutations[{i}].kind must be one of {allowed}, got {m.kind}")
        k = MutationKind(m.kind - 1)
        kind[i], src[i] = k, m.src
        dst[i] = m.dst if k.is_edge else -1
        if k.has_features:
            if not m.features:
                raise MutationError(f"mutations[{i}] is {k.name} and needs features, got none")
            feats.append(list(m.features))
        elif m.features:
            raise MutationError(f"mutations[{i}] is {k.name} and takes no features, got {len(m.features)}")
    widths = sorted({len(f) for f in feats})
    if len(widths) > 1:
        raise MutationError(f"features must have one width within a request, got widths {widths}")
    import torch

    width = widths[0] if widths else 0
    features = torch.tensor(np.asarray(feats, dtype=np.float32).reshape(len(feats), width))
    if features.numel() and not bool(torch.isfinite(features).all()):
        raise MutationError("features must be finite; got NaN or inf")
    assert int(feature_kinds_mask(kind).sum()) == len(feats)
    return MutationBatch(kind, src, dst, features)


# ------------------------------------------------------------------------------------ status
def status_to_proto(st: ClusterStatus) -> pb.StatusResponse:
    return pb.StatusResponse(
        partitions=[
            pb.PartitionStatus(
                partition=p.partition,
                alive=p.alive,
                num_vertices=p.num_vertices,
                watermark={int(k): int(v) for k, v in p.watermark.items()},
                lag=p.lag,
                applied_mutations=p.applied_mutations,
                mutations_per_s=p.mutations_per_s,
                node=p.node,
                memory_bytes={str(k): int(v) for k, v in p.memory_bytes.items()},
                rss_bytes=p.rss_bytes,
            )
            for p in st.partitions
        ],
        watermark={int(k): int(v) for k, v in st.watermark.items()},
        num_layers=st.num_layers,
        embedding_dims=list(st.embedding_dims),
        healthy=st.healthy,
        extra={str(k): float(v) for k, v in st.extra.items()},
        model=None
        if st.model is None
        else pb.ModelInfo(layer_types=list(st.model.layer_types), dims=list(st.model.dims), digest=st.model.digest),
    )


def proto_to_status(resp: pb.StatusResponse) -> ClusterStatus:
    return ClusterStatus(
        partitions=[
            PartitionStatus(
                partition=p.partition,
                alive=p.alive,
                num_vertices=p.num_vertices,
                watermark=dict(p.watermark),
                lag=p.lag,
                applied_mutations=p.applied_mutations,
                mutations_per_s=p.mutations_per_s,
                node=p.node,
                memory_bytes=dict(p.memory_bytes),
                rss_bytes=p.rss_bytes,
            )
            for p in resp.partitions
        ],
        watermark=dict(resp.watermark),
        num_layers=resp.num_layers,
        embedding_dims=list(resp.embedding_dims),
        extra=dict(resp.extra),
        model=ModelInfo(list(resp.model.layer_types), list(resp.model.dims), resp.model.digest)
        if resp.HasField("model")
        else None,
    )
