"""Arrow schema version 2 (``features: list<float32>``, no feature slots on rows without features), without a
broker: the default writer, round trips next to version 1, the records the producer splits, and bad v2 records."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clustergnn import codec
from clustergnn.codec import columns_to_batch
from clustergnn.mutations import MutationBatch, MutationKind
from clustergnn.partition import HashPartitionMap, split_by_owner
from streams.producer import arrow_records
from streams.wire import (
    ARROW_SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    DecodedRecord,
    DecodeError,
    DecodeErrorCode,
    decode_arrow,
    decode_record,
    encode_arrow,
)
from tests.batches import assert_same

PM = HashPartitionMap(4)
F = 3
LIST = pa.list_(pa.float32())


def _feats(n: int, width: int = F, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32))


def mixed_batch(width: int = F) -> MutationBatch:
    """Every kind, interleaved, all routed to partition 1 (routing ids = 1 mod 4)."""
    return MutationBatch.concat(
        [
            MutationBatch.add_edges([2], [1]),
            MutationBatch.add_vertices([1, 5], _feats(2, width)),
            MutationBatch.add_edges([2, 3, 7], [5, 9, 1]),
            MutationBatch.update_features([5], _feats(1, width, seed=1)),
            MutationBatch.remove_edges([3], [9]),
            MutationBatch.remove_vertices([13]),
            MutationBatch.add_vertices([9], _feats(1, width, seed=2)),
            MutationBatch.add_edges([-4], [-3]),  # -3 mod 4 == 1
        ]
    )


def ok(value: bytes, partition: int = 1, feature_dim: int | None = F) -> DecodedRecord:
    out = decode_record(value, None, partition, PM, feature_dim)
    assert isinstance(out, DecodedRecord), out
    return out


def rejected(value: bytes, feature_dim: int | None = F) -> DecodeError:
    out = decode_record(value, None, 1, PM, feature_dim)
    assert isinstance(out, DecodeError), "accepted a bad record"
    return out


def read_table(value: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(value)).read_all()


def v2_bytes(kind: list[int], src: list[int], dst: list[int], features: pa.Array, version: str = "2") -> bytes:
    """A version-2 record built by hand from ``docs/wire-format.md``, not with our encoder."""
    schema = pa.schema(
        [("kind", pa.int8()), ("src", pa.int64()), ("dst", pa.int64()), ("features", features.type)],
        metadata={SCHEMA_VERSION_KEY: version},
    )
    rb = pa.record_batch(
        [pa.array(kind, pa.int8()), pa.array(src, pa.int64()), pa.array(dst, pa.int64()), features], schema=schema
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as w:
        w.write_batch(rb)
    return sink.getvalue().to_pybytes()


# ----------------------------------------------------------------------------- what version 2 writes


def test_version_2_is_written_by_default_and_carries_no_slots_for_rows_without_features() -> None:
    b = mixed_batch()
    value = encode_arrow(b)
    assert ARROW_SCHEMA_VERSION == 2
    table = read_table(value)
    assert table.schema.metadata == {SCHEMA_VERSION_KEY.encode(): b"2"}
    col = table.column("features").combine_chunks()
    assert col.type == LIST
    has = np.isin(b.kind, [MutationKind.ADD_VERTEX, MutationKind.UPDATE_FEATURES])
    lengths = np.diff(col.offsets.to_numpy())
    np.testing.assert_array_equal(lengths, np.where(has, F, 0))
    np.testing.assert_array_equal(col.is_valid().to_numpy(zero_copy_only=False), has)  # null where no features
    assert len(col.values) == int(has.sum()) * F  # the child holds the feature rows' values and nothing else
    np.testing.assert_array_equal(col.values.to_numpy().reshape(-1, F), b.features.numpy())


def test_version_2_mixed_records_are_smaller_by_the_slots_version_1_pads() -> None:
    width = 64
    b = MutationBatch.concat(
        [MutationBatch.add_vertices([1], _feats(1, width)), MutationBatch.add_edges(np.arange(200), np.full(200, 1))]
    )
    v1, v2 = encode_arrow(b, schema_version=1), encode_arrow(b)
    # version 1 pads each of the 200 edge rows with 64 float32 zeros; version 2 spends one 4-byte offset
    assert len(v1) - len(v2) >= 200 * (4 * width - 8), (len(v1), len(v2))
    assert len(v2) < 21.2 * len(b) + 4 * width + 1024, len(v2)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_mixed_batch_round_trips_in_both_versions(version: int, compression: str) -> None:
    b = mixed_batch()
    rec = ok(encode_arrow(b, compression=compression, schema_version=version))  # type: ignore[arg-type]
    assert rec.feature_dim == F
    assert_same(rec.to_batch(), b)


def test_version_1_records_are_still_what_they_were() -> None:
    value = encode_arrow(mixed_batch(), schema_version=1)
    table = read_table(value)
    assert table.schema.metadata == {SCHEMA_VERSION_KEY.encode(): b"1"}
    assert table.schema.field("features").type == pa.list_(pa.float32(), F)
    assert_same(ok(value).to_batch(), mixed_batch())


@pytest.mark.parametrize(
    "batch",
    [
        MutationBatch.add_edges([0, 1, 2], [1, 5, 9]),
        MutationBatch.remove_vertices([1, 5]),
        MutationBatch.concat([MutationBatch.add_edges([0], [1]), MutationBatch.remove_vertices([5])]),
        MutationBatch.empty(),
        MutationBatch.empty(7),
    ],
    ids=["edges", "vertex-removals", "edges-and-removals", "empty", "empty-F7"],
)
def test_records_without_feature_rows_have_no_width(batch: MutationBatch) -> None:
    value = encode_arrow(batch)
    col = read_table(value).column("features")
    assert col.type == LIST and sum(len(c.values) for c in col.chunks) == 0
    rec = ok(value, feature_dim=64)  # no feature rows: fits any expected width
    assert rec.feature_dim is None and len(rec) == len(batch)
    out = columns_to_batch([rec], feature_dim=64)
    assert out.feature_dim == 64
    assert_same(out, MutationBatch(batch.kind, batch.src, batch.dst, torch.zeros(0, 64)))


def test_records_of_both_versions_join_into_one_batch() -> None:
    a, b, c = mixed_batch(), MutationBatch.add_edges([6], [5]), MutationBatch.update_features([1], _feats(1, seed=3))
    recs = [ok(encode_arrow(a, schema_version=1)), ok(encode_arrow(b)), ok(encode_arrow(c, compression="lz4"))]
    assert_same(columns_to_batch(recs, F), MutationBatch.concat([a, b, c]))


def test_empty_lists_on_rows_without_features_are_accepted() -> None:
    # null is what clustergnn writes; an empty (non-null) list carries no values either
    feats = pa.array([[1.0, 2.0, 3.0], [], None], type=LIST)
    rec = ok(v2_bytes([0, 2, 3], [1, 2, 3], [-1, 1, 5], feats))
    np.testing.assert_array_equal(rec.kind, [0, 2, 3])
    np.testing.assert_array_equal(rec.features, [[1, 2, 3]])


def test_sliced_and_multi_batch_version_2_streams_decode() -> None:
    kind = pa.array([2, 0, 2, 4, 0], pa.int8())
    src = pa.array([9, 1, 3, 5, 13], pa.int64())
    dst = pa.array([1, -1, 5, -1, -1], pa.int64())
    feats = pa.array([None, [1.0, 2, 3], None, [4.0, 5, 6], [7.0, 8, 9]], type=LIST)
    t = pa.table({"kind": kind, "src": src, "dst": dst, "features": feats})
    t = pa.concat_tables([t.slice(1, 2), t.slice(3, 2)]).replace_schema_metadata({SCHEMA_VERSION_KEY: "2"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        for rb in t.to_batches():  # two record batches, the first sliced off its array's start
            w.write_batch(rb)
    rec = ok(sink.getvalue().to_pybytes())
    np.testing.assert_array_equal(rec.src, [1, 3, 5, 13])
    np.testing.assert_array_equal(rec.features, np.arange(1, 10, dtype=np.float32).reshape(3, 3))
    # a sliced list array straight into the codec: its offsets do not start at 0
    sliced = codec.decode(
        pa.table({"kind": kind, "src": src, "dst": dst, "features": feats}).slice(2), codec.FeatureLayout.LIST
    )
    assert isinstance(sliced, codec.MutationColumns), sliced
    np.testing.assert_array_equal(sliced.features, [[4, 5, 6], [7, 8, 9]])


ids = st.integers(min_value=-(2**40), max_value=2**40)


@st.composite
def batches(draw: st.DrawFn) -> MutationBatch:
    n = draw(st.integers(0, 40))
    kinds = draw(st.lists(st.sampled_from(list(MutationKind)), min_size=n, max_size=n))
    kind = np.array(kinds, dtype=np.int8)
    srcs = np.array(draw(st.lists(ids, min_size=n, max_size=n)), dtype=np.int64)
    dsts = np.array(draw(st.lists(ids, min_size=n, max_size=n)), dtype=np.int64)
    dst = np.where([k.is_edge for k in kinds], dsts, -1).astype(np.int64) if n else np.zeros(0, np.int64)
    nf = sum(k.has_features for k in kinds)
    feats = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=nf * F, max_size=nf * F))
    return MutationBatch(kind, srcs, dst, torch.tensor(feats, dtype=torch.float32).reshape(nf, F))


@settings(max_examples=80, deadline=None)
@given(batches(), st.sampled_from([1, 2]), st.sampled_from(["none", "lz4"]))
def test_property_every_batch_round_trips_in_either_version(b: MutationBatch, version: int, compression: str) -> None:
    for p, part in split_by_owner(b, PM).items():
        assert_same(ok(encode_arrow(part, compression, version), partition=p).to_batch(F), part)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the producer's records


@pytest.mark.parametrize("version", [1, 2])
def test_producer_records_stay_under_the_byte_limit_and_keep_order(version: int) -> None:
    width = 64
    rng = np.random.default_rng(0)
    n = 3000
    kind = rng.choice([0, 2, 3, 4], size=n, p=[0.05, 0.5, 0.35, 0.1]).astype(np.int8)
    src = np.arange(n, dtype=np.int64)
    dst = np.where(np.isin(kind, [2, 3]), rng.integers(0, 100, n), -1).astype(np.int64)
    nf = int(np.isin(kind, [0, 4]).sum())
    b = MutationBatch(kind, src, dst, _feats(nf, width))
    limit = 16_384
    records = arrow_records(b, max_bytes=limit, compression="none", schema_version=version)  # type: ignore[arg-type]
    assert sum(m for _, m in records) == n and all(len(v) <= limit for v, _ in records)
    got = [decode_arrow(v) for v, _ in records]  # the format alone: these rows route to every partition
    assert all(isinstance(g, DecodedRecord) for g in got), got
    assert_same(columns_to_batch(got, width), b)
    if version == 2:  # edge rows cost 22 bytes, not 17 + 4F: far fewer records than version 1 needs
        v1 = arrow_records(b, max_bytes=limit, compression="none", schema_version=1)
        assert len(records) * 3 < len(v1), (len(records), len(v1))


# ----------------------------------------------------------------------------- bad version-2 records


def test_each_version_has_exactly_its_own_features_type() -> None:
    fixed = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2, 3], pa.float32()), F)
    err = rejected(v2_bytes([0], [1], [-1], fixed))  # a version-1 column under version 2
    assert err.code == DecodeErrorCode.BAD_TYPE and "list<float32>" in err.message and "fixed_size_list" in err.message
    err = rejected(v2_bytes([0], [1], [-1], pa.array([[1.0, 2, 3]], LIST), version="1"))
    assert err.code == DecodeErrorCode.BAD_TYPE and "fixed_size_list<float32>[F]" in err.message
    for typ in (pa.list_(pa.float64()), pa.large_list(pa.float32()), pa.list_(pa.float16())):
        err = rejected(v2_bytes([0], [1], [-1], pa.array([[1.0, 2, 3]], typ)))
        assert err.code == DecodeErrorCode.BAD_TYPE and str(typ) in err.message, (typ, err)


def test_a_row_without_features_must_carry_none() -> None:
    err = rejected(v2_bytes([0, 2], [1, 2], [-1, 1], pa.array([[1.0, 2, 3], [4.0, 5, 6]], LIST)))
    assert err.code == DecodeErrorCode.EXTRA_FIELD and "row 1 (ADD_EDGE) must not carry" in err.message
    # a null row whose segment spans values is legal Arrow, but those values cost bytes: rejected too
    offsets = pa.array([0, 3, 4], pa.int32())
    values = pa.array([1.0, 2, 3, 9], pa.float32())
    feats = pa.ListArray.from_arrays(offsets, values, mask=pa.array([False, True]))
    assert feats.null_count == 1
    err = rejected(v2_bytes([0, 3], [1, 2], [-1, 1], feats))
    assert err.code == DecodeErrorCode.EXTRA_FIELD and "row 1 (REMOVE_EDGE)" in err.message


def test_a_feature_row_must_carry_features() -> None:
    err = rejected(v2_bytes([2, 4], [2, 1], [1, -1], pa.array([None, None], LIST)))
    assert err.code == DecodeErrorCode.MISSING_FIELD and "row 1 (UPDATE_FEATURES) lacks" in err.message
    err = rejected(v2_bytes([0, 0], [1, 5], [-1, -1], pa.array([[1.0, 2, 3], None], LIST)))
    assert err.code == DecodeErrorCode.MISSING_FIELD and "row 1 (ADD_VERTEX)" in err.message


def test_feature_rows_must_be_equally_wide_and_as_wide_as_expected() -> None:
    err = rejected(v2_bytes([0, 2, 0], [1, 2, 5], [-1, 1, -1], pa.array([[1.0, 2, 3], None, [1.0, 2]], LIST)))
    assert err.code == DecodeErrorCode.FEATURE_WIDTH and "row 2 (ADD_VERTEX) holds 2 features; row 0 holds 3" in (
        err.message
    )
    err = rejected(v2_bytes([0], [1], [-1], pa.array([[]], LIST)))
    assert err.code == DecodeErrorCode.FEATURE_WIDTH and "at least 1 wide" in err.message
    err = rejected(v2_bytes([4, 0], [1, 5], [-1, -1], pa.array([[1.0, 2, 3], []], LIST)))
    assert err.code == DecodeErrorCode.FEATURE_WIDTH and "row 1 (ADD_VERTEX) holds 0" in err.message
    err = rejected(encode_arrow(mixed_batch(width=4)))
    assert err.code == DecodeErrorCode.FEATURE_WIDTH and "4 wide; expected 3" in err.message


def test_feature_values_must_be_present_and_finite() -> None:
    err = rejected(v2_bytes([2, 0], [2, 1], [1, -1], pa.array([None, [1.0, None, 3]], LIST)))
    assert err.code == DecodeErrorCode.BAD_VALUE and "row 1 (ADD_VERTEX) has null feature values" in err.message
    for bad in (float("nan"), float("inf"), float("-inf")):
        err = rejected(v2_bytes([0, 2, 4], [1, 2, 5], [-1, 1, -1], pa.array([[1.0, 2, 3], None, [4.0, bad, 6]], LIST)))
        assert err.code == DecodeErrorCode.NON_FINITE and "feature row 1" in err.message, err


def test_offsets_outside_the_values_are_a_decode_error_not_an_exception() -> None:
    # valid records whose offsets are then rewritten, as a broken writer might (pyarrow's reader does not check them)
    good = v2_bytes([0, 0], [1, 5], [-1, -1], pa.array([[1.0, 2, 3], [4.0, 5, 6]], LIST))
    offsets = np.array([0, 3, 6], np.int32).tobytes()
    assert good.count(offsets) == 1
    for new, code, needle in (
        ([3, 6, 9], DecodeErrorCode.BAD_VALUE, "feature offsets [3, 9) exceed the 6 values"),
        ([-3, 0, 3], DecodeErrorCode.BAD_VALUE, "feature offsets [-3, 3) exceed the 6 values"),
        ([0, 3, 9], DecodeErrorCode.FEATURE_WIDTH, "row 1 (ADD_VERTEX) holds 6 features"),
        ([0, 3, 2], DecodeErrorCode.FEATURE_WIDTH, "row 1 (ADD_VERTEX) holds -1 features"),
    ):
        err = rejected(good.replace(offsets, np.array(new, np.int32).tobytes()))
        assert err.code == code and needle in err.message, (new, err)


# ----------------------------------------------------------------------------- the normative page's example


def test_the_python_example_of_the_wire_format_page_writes_an_accepted_version_2_record() -> None:
    """``docs/wire-format.md`` section 4.3, run as written (its Kafka producer replaced by a list)."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "wire-format.md").read_text()
    section = page[page.index("### 4.3") : page.index("### 4.4")]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    sent: list[dict] = []

    class Producer:
        def produce(self, topic: str, value: bytes, partition: int) -> None:
            sent.append({"topic": topic, "value": value, "partition": partition})

    exec(compile(code, "docs/wire-format.md", "exec"), {"producer": Producer()})  # noqa: S102
    (rec,) = sent
    assert read_table(rec["value"]).schema.metadata == {SCHEMA_VERSION_KEY.encode(): b"2"}
    out = decode_record(rec["value"], None, rec["partition"], PM, 2)
    assert isinstance(out, DecodedRecord), out
    np.testing.assert_array_equal(out.kind, [0, 2, 2])
    np.testing.assert_array_equal(out.features, np.array([[0.1, 0.2]], np.float32))
