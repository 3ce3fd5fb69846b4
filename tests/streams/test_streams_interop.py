"""Records written by independent clients (librdkafka via confluent-kafka, and kcat) decode in our consumer.

The Arrow records here are built from ``docs/wire-format.md`` by hand with pyarrow, not with our encoder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from clustergnn.mutations import MutationBatch
from clustergnn.partition import HashPartitionMap
from streams.consumer import H_REASON, MutationConsumer
from streams.topics import dead_letter_topic_for, ensure_topics
from tests.batches import assert_same
from tests.kafka_util import drain, joined, read_all

pytestmark = pytest.mark.integration

P = 4
PM = HashPartitionMap(P)


def owner(v: int) -> int:
    return v % P  # the documented map, computed as a foreign producer would


def arrow_record(kind: list[int], src: list[int], dst: list[int], feats: list[list[float] | None], width: int) -> bytes:
    """An Arrow record exactly as the wire-format page describes it."""
    values = [x for row in feats for x in (row if row is not None else [0.0] * width)]
    features = pa.FixedSizeListArray.from_arrays(
        pa.array(values, type=pa.float32()), width, mask=pa.array([row is None for row in feats])
    )
    schema = pa.schema(
        [("kind", pa.int8()), ("src", pa.int64()), ("dst", pa.int64()), ("features", pa.list_(pa.float32(), width))],
        metadata={"clustergnn.schema_version": "1"},
    )
    batch = pa.record_batch(
        [pa.array(kind, pa.int8()), pa.array(src, pa.int64()), pa.array(dst, pa.int64()), features], schema=schema
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


@pytest.fixture
def topic(kafka_bootstrap: str, topic_name: Callable[[], str]) -> str:
    name = topic_name()
    ensure_topics(kafka_bootstrap, name, P)
    return name


def test_confluent_kafka_producer_json_and_arrow(kafka_bootstrap: str, topic: str) -> None:
    ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka (the project's test extra) is not installed")
    prod = ck.Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 0})
    # partition 2: vertices 2 and 6 (Arrow, one record), an edge 6 -> 2 and a feature update of 6 (JSON)
    prod.produce(
        topic,
        value=arrow_record([0, 0, 2], [2, 6, 6], [-1, -1, 2], [[1.0, 2.0], [3.0, 4.0], None], 2),
        partition=owner(2),
    )
    for obj in (
        {"v": 1, "op": "add_edge", "src": 2, "dst": 6},
        {"v": 1, "op": "update_features", "id": 6, "features": [5, 6.5]},
    ):
        route = obj.get("dst", obj.get("id"))
        prod.produce(topic, key=str(route).encode(), value=json.dumps(obj).encode(), partition=owner(route))
    # partition 3: a remove_vertex of -1 (owner 3: the non-negative remainder)
    prod.produce(topic, key=b"-1", value=b'{"v":1,"op":"remove_vertex","id":-1}', partition=owner(-1))
    assert prod.flush(10) == 0
    with MutationConsumer(kafka_bootstrap, topic, [2, 3], PM, feature_dim=2) as c:
        got = drain(c, {2: 3, 3: 1})
    p2 = joined(got[2])
    np.testing.assert_array_equal(p2.kind, [0, 0, 2, 2, 4])
    np.testing.assert_array_equal(p2.src, [2, 6, 6, 2, 6])
    np.testing.assert_array_equal(p2.dst, [-1, -1, 2, 6, -1])
    np.testing.assert_array_equal(p2.features.numpy(), [[1, 2], [3, 4], [5, 6.5]])
    assert_same(joined(got[3]), MutationBatch.remove_vertices([-1]))


def _kcat_env(tmp_path: Path) -> dict[str, str]:
    """kcat from Debian (librdkafka 2.0.2) fails the broker's ApiVersions; point it at the newer
    librdkafka bundled in the confluent-kafka wheel (../shared/STACK.md)."""
    ck = pytest.importorskip("confluent_kafka", reason="kcat needs the librdkafka bundled with confluent-kafka")
    libs = Path(ck.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        pytest.skip(f"no librdkafka in {libs}")
    # the wheel renames it (librdkafka-<hash>.so.1); kcat asks for the soname librdkafka.so.1
    shim = tmp_path / "rdkafka-lib"
    shim.mkdir()
    (shim / "librdkafka.so.1").symlink_to(found[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(shim), env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


def test_kcat_produces_json_lines_from_a_file(kafka_bootstrap: str, topic: str, tmp_path: Path) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (Debian: apt-get install -y kcat)")
    env = _kcat_env(tmp_path)
    lines = {
        1: [  # key<TAB>value, one mutation per line
            '1\t{"v": 1, "op": "add_vertex", "id": 1, "features": [0.5, 1.5]}',
            '5\t{"v": 1, "op": "add_vertex", "id": 5, "features": [2, 3]}',
            '5\t{"v": 1, "op": "add_edge", "src": 1, "dst": 5}',
            "5\tthis line is not a mutation",
            '1\t{"v": 1, "op": "add_edge", "src": 8, "dst": 1}',
        ],
        0: ['4\t{"v": 1, "op": "remove_vertex", "id": 4}'],
    }
    for partition, rows in lines.items():
        path = tmp_path / f"p{partition}.jsonl"
        path.write_text("\n".join(rows) + "\n")
        proc = subprocess.run(
            [kcat, "-P", "-b", kafka_bootstrap, "-t", topic, "-p", str(partition), "-K", "\t", "-l", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    with MutationConsumer(kafka_bootstrap, topic, [0, 1], PM, feature_dim=2) as c:
        got = drain(c, {0: 1, 1: 5})
    p1 = joined(got[1])
    np.testing.assert_array_equal(p1.kind, [0, 0, 2, 2])
    np.testing.assert_array_equal(p1.src, [1, 5, 1, 8])
    np.testing.assert_array_equal(p1.features.numpy(), [[0.5, 1.5], [2, 3]])
    assert_same(joined(got[0]), MutationBatch.remove_vertices([4]))
    (letter,) = read_all(kafka_bootstrap, dead_letter_topic_for(topic), list(range(P)), expect=1)
    assert dict(letter.headers)[H_REASON] == b"not_arrow_or_json" and letter.value == b"this line is not a mutation"
