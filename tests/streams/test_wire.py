"""The Kafka wire format, without a broker: encode/decode round trips and every kind of bad record."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clustergnn.codec import columns_to_batch
from clustergnn.mutations import MutationBatch, MutationKind
from clustergnn.partition import HashPartitionMap, split_by_owner
from clustergnn.partition import route as batch_routing_ids
from streams.wire import (
    SCHEMA_VERSION_KEY,
    DecodedRecord,
    DecodeError,
    DecodeErrorCode,
    decode_record,
    encode_arrow,
    encode_json,
    sniff_format,
)
from tests.batches import assert_same

PM = HashPartitionMap(4)
F = 3


def _feats(n: int, width: int = F, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32))


def mixed_batch() -> MutationBatch:
    """Every kind, all routed to partition 1 (routing ids = 1 mod 4)."""
    return MutationBatch.concat(
        [
            MutationBatch.add_vertices([1, 5, 9], _feats(3)),
            MutationBatch.add_edges([2, 3, 7], [5, 9, 1]),
            MutationBatch.update_features([5], _feats(1, seed=1)),
            MutationBatch.remove_edges([3], [9]),
            MutationBatch.remove_vertices([13]),
            MutationBatch.add_edges([-4], [-3]),  # -3 mod 4 == 1
        ]
    )


def ok(value: bytes | None, key: bytes | None = None, partition: int = 1, feature_dim: int | None = F) -> DecodedRecord:
    out = decode_record(value, key, partition, PM, feature_dim)
    assert isinstance(out, DecodedRecord), out
    return out


def rejected(
    value: bytes | None, key: bytes | None = None, partition: int = 1, feature_dim: int | None = F
) -> DecodeError:
    out = decode_record(value, key, partition, PM, feature_dim)
    assert isinstance(out, DecodeError), f"accepted a bad record: {value!r}"
    assert str(out)  # the reason reads as text
    return out


def arrow_bytes(table: pa.Table, metadata: dict[str, str] | None = {SCHEMA_VERSION_KEY: "1"}) -> bytes:  # noqa: B006
    table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def edge_table(src: list[int], dst: list[int], width: int = 1, **extra: pa.Array) -> pa.Table:
    n = len(src)
    cols = {
        "kind": pa.array([MutationKind.ADD_EDGE] * n, type=pa.int8()),
        "src": pa.array(src, type=pa.int64()),
        "dst": pa.array(dst, type=pa.int64()),
        "features": pa.nulls(n, type=pa.list_(pa.float32(), width)),
    }
    cols.update(extra)
    return pa.table(cols)


def vertex_table(ids: list[int], feats: np.ndarray, kind: int = MutationKind.ADD_VERTEX) -> pa.Table:
    n, width = feats.shape
    return pa.table(
        {
            "kind": pa.array([kind] * n, type=pa.int8()),
            "src": pa.array(ids, type=pa.int64()),
            "dst": pa.array([-1] * n, type=pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), type=pa.float32()), width),
        }
    )


def js(obj: dict) -> bytes:
    return json.dumps(obj).encode()


# ----------------------------------------------------------------------------- round trips


def test_arrow_round_trip_every_kind() -> None:
    b = mixed_batch()
    value = encode_arrow(b)
    assert sniff_format(value) == "arrow"
    assert_same(ok(value).to_batch(), b)


def test_arrow_edge_only_record_has_no_feature_width() -> None:
    b = MutationBatch.add_edges([0, 1, 2], [1, 5, 9])
    rec = ok(encode_arrow(b), feature_dim=64)  # an all-null features column fits any expected width
    assert rec.feature_dim is None
    out = columns_to_batch([rec], feature_dim=64)
    assert out.feature_dim == 64 and len(out) == 3


def test_arrow_empty_record() -> None:
    rec = ok(arrow_bytes(edge_table([], [])))
    assert len(rec) == 0


def test_arrow_sliced_and_multi_batch_stream_decodes() -> None:
    t = vertex_table([1, 5, 9, 13], np.arange(12, dtype=np.float32).reshape(4, 3))
    t = pa.concat_tables([t.slice(1, 2), t.slice(3, 1)])  # two chunks, the first at an offset
    sink = pa.BufferOutputStream()
    t = t.replace_schema_metadata({SCHEMA_VERSION_KEY: "1"})
    with pa.ipc.new_stream(sink, t.schema) as w:
        for rb in t.to_batches():
            w.write_batch(rb)
    rec = ok(sink.getvalue().to_pybytes())
    np.testing.assert_array_equal(rec.src, [5, 9, 13])
    np.testing.assert_array_equal(rec.features, np.arange(3, 12, dtype=np.float32).reshape(3, 3))


def test_arrow_compressed_record_decodes() -> None:
    b = mixed_batch()
    assert_same(ok(encode_arrow(b, compression="lz4")).to_batch(), b)


def test_json_round_trip_every_kind() -> None:
    b = mixed_batch()
    records = encode_json(b)
    assert len(records) == len(b)
    decoded = [ok(v, k) for k, v in records]
    assert_same(columns_to_batch(decoded), b)
    key, value = records[0]
    assert key == b"1" and json.loads(value) == {
        "v": 1,
        "op": "add_vertex",
        "id": 1,
        "features": b.features[0].tolist(),
    }


def test_json_accepts_integers_as_features_and_whitespace() -> None:
    rec = ok(b'  \n{"v": 1, "op": "update_features", "id": 5, "features": [1, 2.5, -3]}', b"5")
    np.testing.assert_array_equal(rec.features, [[1, 2.5, -3]])


def test_split_by_owner_keeps_order_and_routes_edges_by_destination() -> None:
    b = MutationBatch.concat(
        [
            MutationBatch.add_vertices([0, 1, 2, 3], _feats(4)),
            MutationBatch.add_edges([0, 1, 2, 3, 0], [1, 2, 3, 0, 2]),
            MutationBatch.remove_vertices([2]),
        ]
    )
    parts = split_by_owner(b, PM)
    assert sorted(parts) == [0, 1, 2, 3]
    for p, part in parts.items():
        assert (PM.owner(batch_routing_ids(part)) == p).all()
    # partition 2: add_vertex 2, edge 1->2, edge 0->2, remove_vertex 2, in batch order
    np.testing.assert_array_equal(parts[2].kind, [0, 2, 2, 1])
    np.testing.assert_array_equal(parts[2].src, [2, 1, 0, 2])
    torch.testing.assert_close(parts[2].features, b.features[2:3])
    assert sum(len(x) for x in parts.values()) == len(b)


ids = st.integers(min_value=-(2**40), max_value=2**40)


@st.composite
def batches(draw: st.DrawFn) -> MutationBatch:
    n = draw(st.integers(0, 30))
    kinds = draw(st.lists(st.sampled_from(list(MutationKind)), min_size=n, max_size=n))
    srcs = draw(st.lists(ids, min_size=n, max_size=n))
    dsts = draw(st.lists(ids, min_size=n, max_size=n))
    kind = np.array(kinds, dtype=np.int8)
    dst = np.where([k.is_edge for k in kinds], dsts, -1).astype(np.int64) if n else np.zeros(0, np.int64)
    nf = sum(k.has_features for k in kinds)
    feats = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=nf * F, max_size=nf * F))
    return MutationBatch(
        kind, np.array(srcs, dtype=np.int64), dst, torch.tensor(feats, dtype=torch.float32).reshape(nf, F)
    )


@settings(max_examples=60, deadline=None)
@given(batches())
def test_property_every_batch_round_trips_through_its_owners(b: MutationBatch) -> None:
    for p, part in split_by_owner(b, PM).items():
        assert_same(ok(encode_arrow(part), partition=p).to_batch(F), part)
        assert_same(columns_to_batch([ok(v, k, partition=p) for k, v in encode_json(part)], F), part)


# ----------------------------------------------------------------------------- bad records: one test per kind


@pytest.mark.parametrize("value", [b"hello", b"", None, b"\x00\x01\x02", b"[1, 2]"])
def test_not_arrow_or_json(value: bytes | None) -> None:
    assert rejected(value, b"1").code == DecodeErrorCode.NOT_ARROW_OR_JSON


def test_corrupt_arrow() -> None:
    value = encode_arrow(mixed_batch())
    assert rejected(value[:4] + b"garbage" * 5).code == DecodeErrorCode.BAD_ARROW
    assert rejected(value[: len(value) // 2]).code == DecodeErrorCode.BAD_ARROW


@pytest.mark.parametrize("value", [b"{not json", b'{"v": 1, "op": "add_edge", "src": 1, "dst": 1} trailing', b"{\xff}"])
def test_bad_json(value: bytes) -> None:
    assert rejected(value, b"1").code == DecodeErrorCode.BAD_JSON


def test_unknown_schema_version_arrow() -> None:
    t = edge_table([1], [1])
    for version in ("3", "0", "01", " 2", ""):
        err = rejected(arrow_bytes(t, {SCHEMA_VERSION_KEY: version}))
        assert err.code == DecodeErrorCode.UNKNOWN_SCHEMA_VERSION and repr(version) in err.message, err
    err = rejected(arrow_bytes(t, None))
    assert err.code == DecodeErrorCode.UNKNOWN_SCHEMA_VERSION and SCHEMA_VERSION_KEY in err.message


@pytest.mark.parametrize("v", [2, 0, "1", 1.0, True, None])
def test_unknown_schema_version_json(v: object) -> None:
    err = rejected(js({"v": v, "op": "add_edge", "src": 1, "dst": 1}), b"1")
    assert err.code == DecodeErrorCode.UNKNOWN_SCHEMA_VERSION and repr(v) in err.message


def test_missing_fields() -> None:
    t = edge_table([1], [1]).drop_columns(["dst"])
    assert rejected(arrow_bytes(t)).code == DecodeErrorCode.MISSING_FIELD
    for obj in (
        {"op": "add_edge", "src": 1, "dst": 1},
        {"v": 1, "src": 1, "dst": 1},
        {"v": 1, "op": "add_edge", "src": 1},
        {"v": 1, "op": "add_vertex", "id": 1},  # no features
    ):
        assert rejected(js(obj), b"1").code == DecodeErrorCode.MISSING_FIELD, obj
    # an ADD_VERTEX row whose features are null
    t = vertex_table([1], np.ones((1, F), np.float32))
    t = t.set_column(3, "features", pa.nulls(1, type=pa.list_(pa.float32(), F)))
    assert rejected(arrow_bytes(t)).code == DecodeErrorCode.MISSING_FIELD


def test_extra_fields() -> None:
    t = edge_table([1], [1], weight=pa.array([1.0]))
    assert rejected(arrow_bytes(t)).code == DecodeErrorCode.EXTRA_FIELD
    for obj in (
        {"v": 1, "op": "add_edge", "src": 1, "dst": 1, "weight": 2},
        {"v": 1, "op": "add_edge", "src": 1, "dst": 1, "features": [1, 2, 3]},
        {"v": 1, "op": "remove_vertex", "id": 1, "dst": 3},
    ):
        err = rejected(js(obj), b"1")
        assert err.code == DecodeErrorCode.EXTRA_FIELD, obj
    # an edge row that carries features
    feats = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0], type=pa.float32()), F)
    t = edge_table([1], [1]).set_column(3, "features", feats)
    assert rejected(arrow_bytes(t)).code == DecodeErrorCode.EXTRA_FIELD


def test_wrong_types_and_values() -> None:
    t = edge_table([1], [1]).set_column(1, "src", pa.array([1], type=pa.int32()))
    err = rejected(arrow_bytes(t))
    assert err.code == DecodeErrorCode.BAD_TYPE and "int32" in err.message
    t = edge_table([1], [1]).set_column(3, "features", pa.nulls(1, type=pa.list_(pa.float64(), 2)))
    assert rejected(arrow_bytes(t)).code == DecodeErrorCode.BAD_TYPE
    t = edge_table([1], [1]).set_column(2, "dst", pa.array([None], type=pa.int64()))
    assert rejected(arrow_bytes(t)).code == DecodeErrorCode.BAD_VALUE
    t = vertex_table([1], np.ones((1, F), np.float32)).set_column(2, "dst", pa.array([7], type=pa.int64()))
    assert rejected(arrow_bytes(t)).code == DecodeErrorCode.BAD_VALUE
    assert rejected(js({"v": 1, "op": "add_edge", "src": "1", "dst": 1}), b"1").code == DecodeErrorCode.BAD_TYPE
    assert rejected(js({"v": 1, "op": "add_edge", "src": 1.5, "dst": 1}), b"1").code == DecodeErrorCode.BAD_TYPE
    assert rejected(js({"v": 1, "op": "add_edge", "src": 2**63, "dst": 1}), b"1").code == DecodeErrorCode.BAD_VALUE
    assert (
        rejected(js({"v": 1, "op": "add_vertex", "id": 1, "features": "1,2,3"}), b"1").code == DecodeErrorCode.BAD_TYPE
    )
    assert (
        rejected(js({"v": 1, "op": "add_vertex", "id": 1, "features": [1, "x", 3]}), b"1").code
        == DecodeErrorCode.BAD_TYPE
    )


def test_null_feature_values() -> None:
    # nulls under null rows are fine (pa.nulls writes them); a null inside a feature row is not
    values = pa.array([1.0, 2.0, 3.0, None, None, None], type=pa.float32())
    feats = pa.FixedSizeListArray.from_arrays(values, F, mask=pa.array([False, True]))
    t = pa.table(
        {
            "kind": pa.array([0, 2], pa.int8()),
            "src": pa.array([1, 0], pa.int64()),
            "dst": pa.array([-1, 1], pa.int64()),
            "features": feats,
        }
    )
    np.testing.assert_array_equal(ok(arrow_bytes(t)).features, [[1, 2, 3]])
    values = pa.array([1.0, None, 3.0], type=pa.float32())
    t = vertex_table([1], np.ones((1, F), np.float32)).set_column(
        3, "features", pa.FixedSizeListArray.from_arrays(values, F)
    )
    err = rejected(arrow_bytes(t))
    assert err.code == DecodeErrorCode.BAD_VALUE and "null feature" in err.message


def test_wrong_feature_width() -> None:
    assert (
        rejected(arrow_bytes(vertex_table([1], np.ones((1, F + 1), np.float32)))).code == DecodeErrorCode.FEATURE_WIDTH
    )
    err = rejected(js({"v": 1, "op": "add_vertex", "id": 1, "features": [1.0, 2.0]}), b"1")
    assert err.code == DecodeErrorCode.FEATURE_WIDTH and "2 wide; expected 3" in err.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_features_arrow(bad: float) -> None:
    feats = np.ones((2, F), np.float32)
    feats[1, 2] = bad
    err = rejected(arrow_bytes(vertex_table([1, 5], feats, kind=MutationKind.UPDATE_FEATURES)))
    assert err.code == DecodeErrorCode.NON_FINITE and "row 1" in err.message


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e39"])
def test_non_finite_features_json(token: bytes) -> None:
    value = b'{"v": 1, "op": "add_vertex", "id": 1, "features": [1.0, ' + token + b", 2.0]}"
    assert rejected(value, b"1").code == DecodeErrorCode.NON_FINITE


def test_unknown_kind() -> None:
    t = edge_table([1], [1]).set_column(0, "kind", pa.array([7], type=pa.int8()))
    err = rejected(arrow_bytes(t))
    assert err.code == DecodeErrorCode.UNKNOWN_KIND and "7" in err.message
    for op in ("explode", "ADD_EDGE", 2, None):
        err = rejected(js({"v": 1, "op": op, "src": 1, "dst": 1}), b"1")
        assert err.code == DecodeErrorCode.UNKNOWN_KIND and repr(op) in err.message


@pytest.mark.parametrize("key", [None, b"", b"abc", b"1.0", b" 1", b"\xff", b"99999999999999999999"])
def test_bad_json_key(key: bytes | None) -> None:
    assert rejected(js({"v": 1, "op": "add_edge", "src": 0, "dst": 1}), key).code == DecodeErrorCode.BAD_KEY


def test_key_mismatch() -> None:
    # key 5 is owned by partition 1 like the record, but the edge routes by its destination 1
    err = rejected(js({"v": 1, "op": "add_edge", "src": 5, "dst": 1}), b"5")
    assert err.code == DecodeErrorCode.KEY_MISMATCH and "5" in err.message


def test_partition_mismatch() -> None:
    err = rejected(js({"v": 1, "op": "add_edge", "src": 0, "dst": 2}), b"2", partition=1)
    assert err.code == DecodeErrorCode.PARTITION_MISMATCH and "partition 2" in err.message
    # one stray mutation rejects the whole Arrow record
    b = MutationBatch.add_edges([0, 0, 0], [1, 5, 6])
    err = rejected(encode_arrow(b), partition=1)
    assert err.code == DecodeErrorCode.PARTITION_MISMATCH and "row 2" in err.message
    # edges route by destination, not source
    assert ok(encode_arrow(MutationBatch.add_edges([2], [1])), partition=1)
    assert (
        rejected(encode_arrow(MutationBatch.add_edges([1], [2])), partition=1).code
        == DecodeErrorCode.PARTITION_MISMATCH
    )


def test_arrow_key_is_ignored() -> None:
    assert ok(encode_arrow(mixed_batch()), key=b"whatever")


def test_every_codec_reason_is_a_dead_letter_reason() -> None:
    """The wire format maps the core codec's rejections by value (``DecodeErrorCode(code.value)``): a codec
    reason the wire format lacked would raise inside the decoder instead of dead-lettering the record."""
    from clustergnn.codec import CodecErrorCode

    missing = {c.value for c in CodecErrorCode} - {c.value for c in DecodeErrorCode}
    assert not missing, f"codec reasons with no dead-letter reason: {sorted(missing)}"
