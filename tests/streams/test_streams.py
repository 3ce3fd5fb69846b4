"""Producer -> real broker -> partitioned consumer: routing, order, offsets, resume, dead letters."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
import torch

from clustergnn.mutations import MutationBatch, MutationKind
from clustergnn.partition import HashPartitionMap, split_by_owner
from clustergnn.partition import route as batch_routing_ids
from streams.consumer import H_DETAIL, H_OFFSET, H_PARTITION, H_REASON, H_TIMESTAMP, H_TOPIC, MutationConsumer
from streams.errors import StreamError
from streams.producer import MutationProducer
from streams.topics import dead_letter_topic_for, ensure_topic, ensure_topics
from streams.wire import SCHEMA_VERSION_KEY, DecodeErrorCode, encode_arrow
from tests.batches import assert_same
from tests.kafka_util import drain, joined, raw_send, read_all

pytestmark = pytest.mark.integration

P = 4
F = 3
PM = HashPartitionMap(P)


def feats(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, F)).astype(np.float32))


def graph_batch(n_vertices: int = 40, n_edges: int = 200, seed: int = 0) -> MutationBatch:
    rng = np.random.default_rng(seed)
    v = np.arange(n_vertices)
    src, dst = rng.integers(0, n_vertices, n_edges), rng.integers(0, n_vertices, n_edges)
    return MutationBatch.concat(
        [
            MutationBatch.add_vertices(v, feats(n_vertices, seed)),
            MutationBatch.add_edges(src, dst),
            MutationBatch.update_features(v[:5], feats(5, seed + 1)),
            MutationBatch.remove_edges(src[:10], dst[:10]),
            MutationBatch.remove_vertices(v[-3:]),
        ]
    )


@pytest.fixture
def topic(kafka_bootstrap: str, topic_name: Callable[[], str]) -> str:
    name = topic_name()
    ensure_topics(kafka_bootstrap, name, P)
    return name


def consumer(bootstrap: str, topic: str, partitions: list[int] | None = None, **kw: object) -> MutationConsumer:
    return MutationConsumer(
        bootstrap,
        topic,
        partitions if partitions is not None else list(range(P)),
        PM,
        feature_dim=kw.pop("feature_dim", F),
        **kw,
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["arrow", "json"])
def test_every_owner_gets_exactly_its_mutations_in_order(kafka_bootstrap: str, topic: str, fmt: str) -> None:
    batch = graph_batch()
    with MutationProducer(kafka_bootstrap, topic, PM, fmt, max_mutations_per_record=50) as prod:  # type: ignore[arg-type]
        last = prod.send(batch, timestamp_ms=1_700_000_000_000)
    expected = split_by_owner(batch, PM)
    assert sorted(last) == sorted(expected)
    with consumer(kafka_bootstrap, topic) as c:
        got = drain(c, {p: off + 1 for p, off in last.items()})
        for p, part in expected.items():
            pbs = got[p]
            assert all(pb.partition == p for pb in pbs)
            out = joined(pbs)
            assert_same(out, part)
            assert (PM.owner(batch_routing_ids(out)) == p).all()
            assert pbs[0].first_offset == 0 and pbs[-1].next_offset == last[p] + 1 == c.position(p)
            offs = np.concatenate([pb.mutation_offsets() for pb in pbs])
            assert len(offs) == len(part) and (np.diff(offs) >= 0).all()
            assert all((pb.record_timestamps_ms == 1_700_000_000_000).all() for pb in pbs)
            assert sum(int(pb.record_sizes.sum()) for pb in pbs) == len(part)
            assert all(pb.dead_letters == 0 for pb in pbs)
        assert c.dead_letters_sent == 0


def test_owner_reads_only_its_partition(kafka_bootstrap: str, topic: str) -> None:
    batch = graph_batch()
    with MutationProducer(kafka_bootstrap, topic, PM) as prod:
        last = prod.send(batch)
    with consumer(kafka_bootstrap, topic, [2]) as c:
        got = drain(c, {2: last[2] + 1})
        assert set(got) == {2}
        assert_same(joined(got[2]), split_by_owner(batch, PM)[2])
        assert c.poll(timeout_ms=300) == []  # nothing from other partitions, ever


def test_one_poll_concatenates_many_records_in_offset_order(kafka_bootstrap: str, topic: str) -> None:
    parts = [MutationBatch.add_edges(np.arange(i * 10, i * 10 + 10), np.full(10, 4 * i + 1)) for i in range(20)]
    with MutationProducer(kafka_bootstrap, topic, PM) as prod:
        for b in parts:
            last = prod.send(b)
    assert last == {1: 19}
    with consumer(kafka_bootstrap, topic, [1]) as c:
        got = drain(c, {1: 20})[1]
        assert len(got) <= 3  # large polls, not one batch per record
        np.testing.assert_array_equal(np.concatenate([pb.record_offsets for pb in got]), np.arange(20))
        assert_same(joined(got), MutationBatch.concat(parts))


def test_resume_from_a_given_offset(kafka_bootstrap: str, topic: str) -> None:
    parts = [MutationBatch.add_edges([i], [1]) for i in range(6)]
    with MutationProducer(kafka_bootstrap, topic, PM) as prod:
        offsets = [prod.send(b)[1] for b in parts]
    assert offsets == list(range(6))
    with consumer(kafka_bootstrap, topic, [1, 2], start_offsets={1: 4}) as c:
        assert c.position(1) == 4 and c.position(2) is None
        got = drain(c, {1: 6})[1]
        assert got[0].first_offset == 4
        np.testing.assert_array_equal(joined(got).src, [4, 5])
        c.seek(1, 1)  # replay, e.g. after restoring an older snapshot
        got = drain(c, {1: 6})[1]
        np.testing.assert_array_equal(joined(got).src, [1, 2, 3, 4, 5])


def test_large_batches_split_into_records_under_the_size_limit(kafka_bootstrap: str, topic: str) -> None:
    n = 100_000
    batch = MutationBatch.add_edges(np.arange(n), np.full(n, 3))
    with MutationProducer(
        kafka_bootstrap, topic, PM, max_mutations_per_record=65_536, max_record_bytes=1_000_000
    ) as prod:
        result = prod.send_async(batch)
        last = result.get()
        assert result.records >= 2 and result.value_bytes / result.records < 1_000_000
    with consumer(kafka_bootstrap, topic, [3]) as c:
        assert_same(joined(drain(c, {3: last[3] + 1})[3]), batch)


def test_topic_partition_count_must_match_the_partition_map(
    kafka_bootstrap: str, topic_name: Callable[[], str]
) -> None:
    name = topic_name()
    ensure_topic(kafka_bootstrap, name, 3)
    with pytest.raises(StreamError, match="has 3 partitions"):
        ensure_topic(kafka_bootstrap, name, 4)
    with pytest.raises(StreamError, match="3 partitions"):
        MutationConsumer(kafka_bootstrap, name, [0], PM)
    with MutationProducer(kafka_bootstrap, name, PM) as prod, pytest.raises(StreamError, match="3 partitions"):
        prod.send(MutationBatch.add_edges([0], [1]))
    with pytest.raises(StreamError, match="does not exist"):
        MutationConsumer(kafka_bootstrap, topic_name(), [0], PM)


# ----------------------------------------------------------------------------- dead letters


def _arrow(table: pa.Table, version: str | None = "1") -> bytes:
    table = table.replace_schema_metadata({SCHEMA_VERSION_KEY: version} if version else None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _table(
    kind: list[int], src: list[int], dst: list[int], features: pa.Array | None = None, width: int = F
) -> pa.Table:
    n = len(kind)
    return pa.table(
        {
            "kind": pa.array(kind, type=pa.int8()),
            "src": pa.array(src, type=pa.int64()),
            "dst": pa.array(dst, type=pa.int64()),
            "features": features if features is not None else pa.nulls(n, type=pa.list_(pa.float32(), width)),
        }
    )


def _fsl(rows: list[list[float]]) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array([x for r in rows for x in r], type=pa.float32()), len(rows[0]))


def _j(obj: dict) -> bytes:
    return json.dumps(obj).encode()


# (case id, key, value, expected reason); every record sits in partition 1
BAD_RECORDS: list[tuple[str, bytes | None, bytes | None, DecodeErrorCode]] = [
    ("not-arrow-or-json", b"1", b"hello", DecodeErrorCode.NOT_ARROW_OR_JSON),
    ("null-value", b"1", None, DecodeErrorCode.NOT_ARROW_OR_JSON),
    ("corrupt-arrow", None, b"\xff\xff\xff\xff" + b"\x00junk" * 8, DecodeErrorCode.BAD_ARROW),
    ("bad-json", b"1", b'{"v": 1, "op": ', DecodeErrorCode.BAD_JSON),
    ("json-version", b"1", _j({"v": 2, "op": "add_edge", "src": 0, "dst": 1}), DecodeErrorCode.UNKNOWN_SCHEMA_VERSION),
    ("arrow-version", None, _arrow(_table([2], [0], [1]), version="9"), DecodeErrorCode.UNKNOWN_SCHEMA_VERSION),
    ("json-missing-field", b"1", _j({"v": 1, "op": "add_edge", "dst": 1}), DecodeErrorCode.MISSING_FIELD),
    ("arrow-missing-column", None, _arrow(_table([2], [0], [1]).drop_columns(["src"])), DecodeErrorCode.MISSING_FIELD),
    (
        "json-extra-field",
        b"1",
        _j({"v": 1, "op": "add_edge", "src": 0, "dst": 1, "w": 0.5}),
        DecodeErrorCode.EXTRA_FIELD,
    ),
    (
        "arrow-extra-column",
        None,
        _arrow(_table([2], [0], [1]).append_column("w", pa.array([0.5]))),
        DecodeErrorCode.EXTRA_FIELD,
    ),
    (
        "json-feature-width",
        b"1",
        _j({"v": 1, "op": "add_vertex", "id": 1, "features": [1.0, 2.0]}),
        DecodeErrorCode.FEATURE_WIDTH,
    ),
    (
        "arrow-feature-width",
        None,
        _arrow(_table([0], [1], [-1], _fsl([[1.0, 2.0, 3.0, 4.0]]))),
        DecodeErrorCode.FEATURE_WIDTH,
    ),
    (
        "json-nan",
        b"1",
        b'{"v": 1, "op": "update_features", "id": 1, "features": [1.0, NaN, 2.0]}',
        DecodeErrorCode.NON_FINITE,
    ),
    ("arrow-inf", None, _arrow(_table([4], [1], [-1], _fsl([[1.0, float("inf"), 2.0]]))), DecodeErrorCode.NON_FINITE),
    ("json-unknown-kind", b"1", _j({"v": 1, "op": "merge", "src": 0, "dst": 1}), DecodeErrorCode.UNKNOWN_KIND),
    ("arrow-unknown-kind", None, _arrow(_table([9], [0], [1])), DecodeErrorCode.UNKNOWN_KIND),
    ("json-no-key", None, _j({"v": 1, "op": "add_edge", "src": 0, "dst": 1}), DecodeErrorCode.BAD_KEY),
    (
        "json-key-not-routing-vertex",
        b"5",
        _j({"v": 1, "op": "add_edge", "src": 5, "dst": 1}),
        DecodeErrorCode.KEY_MISMATCH,
    ),
    (
        "json-wrong-partition",
        b"2",
        _j({"v": 1, "op": "add_edge", "src": 0, "dst": 2}),
        DecodeErrorCode.PARTITION_MISMATCH,
    ),
    ("arrow-wrong-partition", None, _arrow(_table([2, 2], [0, 0], [1, 2])), DecodeErrorCode.PARTITION_MISMATCH),
]


@pytest.mark.parametrize(("key", "value", "reason"), [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_bad_record_goes_to_dead_letter_topic_and_consumption_continues(
    kafka_bootstrap: str, topic: str, key: bytes | None, value: bytes | None, reason: DecodeErrorCode
) -> None:
    good_before = MutationBatch.concat(
        [MutationBatch.add_vertices([1, 5], feats(2)), MutationBatch.add_edges([0], [1])]
    )
    good_after = MutationBatch.add_edges([2, 3], [5, 9])
    records = [(1, None, encode_arrow(good_before)), (1, key, value)]
    records += [
        (1, k, v)
        for k, v in [
            (b"5", _j({"v": 1, "op": "add_edge", "src": 2, "dst": 5})),
            (b"9", _j({"v": 1, "op": "add_edge", "src": 3, "dst": 9})),
        ]
    ]
    offsets = raw_send(kafka_bootstrap, topic, records)
    assert offsets == [0, 1, 2, 3]
    with consumer(kafka_bootstrap, topic, [1]) as c:
        got = drain(c, {1: 4})[1]
        assert_same(joined(got), MutationBatch.concat([good_before, good_after]))  # nothing lost, nothing reordered
        assert got[0].first_offset == 0 and got[-1].next_offset == 4
        np.testing.assert_array_equal(np.concatenate([pb.record_offsets for pb in got]), [0, 2, 3])
        assert sum(pb.dead_letters for pb in got) == 1 and c.dead_letters_sent == 1
    dlq = read_all(kafka_bootstrap, dead_letter_topic_for(topic), list(range(P)), expect=1)
    assert len(dlq) == 1
    letter = dlq[0]
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers[H_REASON] == reason.value
    assert headers[H_TOPIC] == topic and headers[H_PARTITION] == "1" and headers[H_OFFSET] == "1"
    assert int(headers[H_TIMESTAMP]) > 0 and headers[H_DETAIL]
    assert letter.value == value and letter.key == key and letter.partition == 1


def test_a_poll_of_only_bad_records_still_moves_the_position(kafka_bootstrap: str, topic: str) -> None:
    raw_send(kafka_bootstrap, topic, [(0, b"0", b"nope"), (0, b"0", b"{}")])
    with consumer(kafka_bootstrap, topic, [0]) as c:
        got = drain(c, {0: 2})[0]
        assert all(len(pb.batch) == 0 for pb in got) and got[-1].next_offset == 2
        assert sum(pb.dead_letters for pb in got) == 2
        assert got[-1].batch.feature_dim == F  # empty batches still say the stream's width


def test_feature_width_is_pinned_by_the_first_record_when_not_given(kafka_bootstrap: str, topic: str) -> None:
    w3 = MutationBatch.add_vertices([1], feats(1))
    w4 = MutationBatch.add_vertices([5], torch.ones(1, 4))
    raw_send(
        kafka_bootstrap, topic, [(1, None, encode_arrow(w3)), (1, None, encode_arrow(w4)), (1, None, encode_arrow(w3))]
    )
    with consumer(kafka_bootstrap, topic, [1], feature_dim=None) as c:
        got = drain(c, {1: 3})[1]
        assert c.feature_dim == F
        assert len(joined(got)) == 2 and sum(pb.dead_letters for pb in got) == 1
    (letter,) = read_all(kafka_bootstrap, dead_letter_topic_for(topic), list(range(P)), expect=1)
    assert dict(letter.headers)[H_REASON] == DecodeErrorCode.FEATURE_WIDTH.value.encode()


def test_kinds_survive_the_wire(kafka_bootstrap: str, topic: str) -> None:
    """Kind numbers are part of the wire format: a record written with raw numbers decodes to them."""
    t = _table(
        [int(MutationKind.ADD_EDGE), int(MutationKind.REMOVE_EDGE), int(MutationKind.REMOVE_VERTEX)],
        [0, 0, 1],
        [1, 1, -1],
    )
    raw_send(kafka_bootstrap, topic, [(1, None, _arrow(t))])
    with consumer(kafka_bootstrap, topic, [1]) as c:
        out = joined(drain(c, {1: 1})[1])
    assert out.counts() == {"add_vertex": 0, "remove_vertex": 1, "add_edge": 1, "remove_edge": 1, "update_features": 0}


def test_a_decoder_crash_dead_letters_the_record_instead_of_stopping(
    kafka_bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.consumer as consumer_module

    real = consumer_module.decode_record

    def flaky(value, key, *args):  # type: ignore[no-untyped-def]
        if key == b"boom":
            raise IndexError("simulated decoder bug")
        return real(value, key, *args)

    monkeypatch.setattr(consumer_module, "decode_record", flaky)
    good = MutationBatch.add_edges([0], [1])
    raw_send(kafka_bootstrap, topic, [(1, b"boom", encode_arrow(good)), (1, None, encode_arrow(good))])
    with consumer(kafka_bootstrap, topic, [1]) as c:
        got = drain(c, {1: 2})[1]
    assert_same(joined(got), good)
    (letter,) = read_all(kafka_bootstrap, dead_letter_topic_for(topic), list(range(P)), expect=1)
    assert dict(letter.headers)[H_REASON] == b"decode_failed"


def test_the_producer_compresses_by_default(kafka_bootstrap: str, topic: str) -> None:
    """LZ4 (the default) makes records smaller on the wire (here 1.8x: the ids and, in schema version 2,
    the offsets of rows without features compress; docs/wire-format.md), and they decode to the same
    mutations."""
    batch = graph_batch(n_vertices=40, n_edges=400)
    sizes = {}
    for comp in ("none", None):
        kw = {} if comp is None else {"compression": comp}
        with MutationProducer(kafka_bootstrap, topic, PM, max_mutations_per_record=10_000, **kw) as prod:
            prod.send(batch)
            sizes[comp] = prod.stats.value_bytes
    assert sizes[None] * 1.5 < sizes["none"], sizes
    with consumer(kafka_bootstrap, topic) as c:
        got = drain(c, {p: 2 for p in range(P)})
    for p, part in split_by_owner(batch, PM).items():
        half = joined(got[p], F)
        assert len(half) == 2 * len(part) and np.array_equal(half.src[: len(part)], half.src[len(part) :])


def test_a_consumer_behind_the_log_end_asks_the_broker_for_a_longer_fetch_wait(
    kafka_bootstrap: str, topic: str
) -> None:
    """``behind_fetch_wait_ms``: the wait of every fetch sent while a partition's position is below the
    high watermark of its last answer (or none is known yet), the short ``fetch_max_wait_ms`` once it is
    at the end.  (The embedded broker cuts its storage read at the wait: with 5 ms and thousands of
    batches a fetch from behind returned one batch or none, docs/operations.md.)"""
    parts = [MutationBatch.add_edges([i], [1]) for i in range(200)]
    with MutationProducer(kafka_bootstrap, topic, PM) as prod:
        for b in parts:
            prod.send(b)  # one record each, sent one by one
    seen: list[int] = []
    with consumer(
        kafka_bootstrap, topic, [1], kafka_config={"fetch_max_wait_ms": 5, "max_partition_fetch_bytes": 4096},
        behind_fetch_wait_ms=400,
    ) as c:  # fmt: skip
        fetcher = c._consumer._fetcher
        adapted = fetcher._create_fetch_requests

        def spy():  # the wait each request is built with, as the adapted builder leaves it
            out = adapted()
            seen.append(fetcher.config["fetch_max_wait_ms"])
            return out

        fetcher._create_fetch_requests = spy
        got = drain(c, {1: 200})[1]
        for _ in range(5):  # at the end now: the next fetches wait briefly
            c.poll(timeout_ms=50)
    assert_same(joined(got), MutationBatch.concat(parts))
    assert seen[0] == 400 and seen[-1] == 5, seen
    assert seen.count(400) >= 2, seen  # several fetches from behind (4 KB each)


def test_schema_versions_1_and_2_mix_in_one_partition(kafka_bootstrap: str, topic: str) -> None:
    """Records already in a log (schema version 1, or a producer not yet upgraded) and new ones (version 2,
    the default) in the same partitions are all consumed, in offset order."""
    old_batch, new_batch = graph_batch(seed=1), graph_batch(seed=2)
    with (
        MutationProducer(kafka_bootstrap, topic, PM, schema_version=1) as old,
        MutationProducer(kafka_bootstrap, topic, PM) as new,
    ):
        assert new.schema_version == 2
        old.send(old_batch)
        new.send(new_batch)
        last = old.send(old_batch)
    with consumer(kafka_bootstrap, topic) as c:
        got = drain(c, {p: last[p] + 1 for p in range(P)})
    expected = split_by_owner(MutationBatch.concat([old_batch, new_batch, old_batch]), PM)
    for p, part in expected.items():
        assert_same(joined(got[p], F), part)
