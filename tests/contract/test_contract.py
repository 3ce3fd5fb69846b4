"""The .proto is the contract: one suite, run against the fake backend AND a real cluster.

Both backends sit behind the real ``GatewayServer`` on 127.0.0.1 and are driven through the stubs
generated from ``proto/clustergnn/v1/clustergnn.proto`` (``actors/gateway/_gen``), as any client in any
language would.  The fake (``tests/gateway/fakes.py``) is built with the real cluster's shapes (input
width, layer widths), so every assertion here is written once and must hold for both: layer numbering,
status dims and model, versions, freshness fields and every status code the proto lists.  When the two
disagree the fake is wrong and is changed (it shares the real rules: ``clustergnn.serving.resolve_read``,
``clustergnn.freshness.Freshness``, ``clustergnn.partition.route``), never a test.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import torch

from actors.gateway import convert
from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
from actors.gateway.server import GatewayServer
from clustergnn import Engine, MutationBatch
from clustergnn.config import GatewayConfig
from tests.gateway.conftest import TOKENS
from tests.gateway.fakes import FakeBackend

F, HIDDEN, OUT, N = 8, 16, 4, 16  # the real cluster's model and graph; the fake is built the same shape
MAX_IDS = 64
AUTH = (("authorization", f"Bearer {TOKENS[0]}"),)


def gateway_config() -> GatewayConfig:
    return GatewayConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        tokens=TOKENS,
        insecure_local=True,
        health_poll_interval_s=0.1,
        max_ids_per_request=MAX_IDS,
        default_deadline_s=5.0,
    )


@dataclass
class Api:
    """Generated stubs on one gateway, plus what only the real backend has (``single``: a
    single-process engine fed the same mutations, for exactness)."""

    name: str
    emb: pb_grpc.EmbeddingServiceStub
    mut: pb_grpc.MutationServiceStub
    admin: pb_grpc.AdminServiceStub
    target: str
    single: Engine | None = None
    backend: object | None = None  # the real cluster (to put a second gateway in front of it)

    def get(self, ids, timeout: float = 10.0, **fields) -> pb.GetEmbeddingsResponse:
        req = pb.GetEmbeddingsRequest(vertex_ids=list(ids))
        for k, v in fields.items():
            if k == "min_offsets":
                req.min_offsets.offsets.update(v)
            else:
                setattr(req, k, v)
        return self.emb.GetEmbeddings(req, timeout=timeout, metadata=AUTH)

    def apply(self, batch: MutationBatch) -> dict[int, int]:
        resp = self.mut.Apply(convert.batch_to_request(batch), timeout=30, metadata=AUTH)
        if self.single is not None:  # first: a write the cluster applies late must not fail every later test
            self.single.apply(batch)
        assert resp.state == pb.APPLY_STATE_APPLIED, resp  # an OK write is applied whole and visible
        return dict(resp.offsets)

    def status(self) -> pb.StatusResponse:
        return self.admin.Status(pb.StatusRequest(), timeout=10, metadata=AUTH)


def _channel_api(name: str, target: str, single: Engine | None = None) -> tuple[grpc.Channel, Api]:
    ch = grpc.insecure_channel(target)
    api = Api(
        name, pb_grpc.EmbeddingServiceStub(ch), pb_grpc.MutationServiceStub(ch), pb_grpc.AdminServiceStub(ch), target
    )
    api.single = single
    return ch, api


def _real(kafka_bootstrap: str, replica_finish: bool) -> Iterator[Api]:
    from actors.cluster import Cluster
    from clustergnn.config import Config

    cluster_cfg = {"partitions": 2, "actor_num_cpus": 0.5}
    if replica_finish:  # no spare owners: the two clusters of this module may be up at once
        cluster_cfg |= {"replica_finish": True, "spare_owners": 0}
    cfg = Config.from_dict(
        {
            "kafka": {"bootstrap": kafka_bootstrap, "topic": f"contract-{uuid.uuid4().hex[:8]}"},
            "cluster": cluster_cfg,
            "model": {"builtin": "sage", "in_dim": F, "hidden": HIDDEN, "out_dim": OUT, "seed": 5},
            "graph": {"dataset": None},
        }
    )
    cluster = Cluster(cfg).start()
    gw = GatewayServer(cluster, gateway_config()).start()
    single = Engine.from_layers(cluster.layers, F)
    gen = torch.Generator().manual_seed(1)
    init = MutationBatch.concat(
        [
            MutationBatch.add_vertices(np.arange(N), torch.randn(N, F, generator=gen)),
            MutationBatch.add_edges(np.arange(N), (np.arange(N) * 5 + 3) % N),
        ]
    )
    single.bulk_load(init)
    cluster.wait_for(cluster.apply(init), timeout_s=60)
    _wait_healthy(cluster, timeout_s=60)
    ch, api = _channel_api("real", gw.target, single)
    api.backend = cluster
    try:
        yield api
    finally:
        ch.close()
        gw.stop()
        cluster.stop()


def _wait_healthy(cluster, timeout_s: float) -> None:
    """Until the cluster says it serves (its start's replay over: on an empty log, its first two rounds),
    as a readiness probe waits.  A write can be visible a little before that: the contract tests start
    from a serving cluster (a busy box once made ``status`` right after the first write say unhealthy)."""
    deadline = time.monotonic() + timeout_s
    while not cluster.healthy:
        if cluster.error is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"the cluster is not healthy {timeout_s}s after its first write (error {cluster.error!r})"
            )
        time.sleep(0.02)


def _fake() -> Iterator[Api]:
    fake = FakeBackend(num_vertices=N, dims=(HIDDEN, OUT), in_dim=F, num_kafka_partitions=2, num_owners=2)
    gw = GatewayServer(fake, gateway_config()).start()
    ch, api = _channel_api("fake", gw.target)
    try:
        yield api
    finally:
        ch.close()
        gw.stop()


# The backends: the fake, the real cluster in eager serving (owners publish final rows to the gateway's
# replica) and in replica-finish serving (``cluster.replica_finish``: the replica finishes the last layer on
# read from published aggregates).  One module-scoped fixture, so pytest runs each backend's tests together
# and stops it before starting the next (two real clusters cannot be up at once: the owners' Ray names).
REAL = ["real_eager", "real_finish"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "api" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["fake", *REAL], indirect=True, scope="module")
    elif "real_api" in metafunc.fixturenames:
        metafunc.parametrize("backend", REAL, indirect=True, scope="module")


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> Iterator[Api]:
    if request.param == "fake":
        yield from _fake()
    else:
        request.getfixturevalue("ray_local")
        yield from _real(request.getfixturevalue("kafka_bootstrap"), replica_finish=request.param == "real_finish")


@pytest.fixture
def api(backend: Api) -> Api:
    """Every backend: each test written with it holds for the fake and for both real serving modes."""
    return backend


@pytest.fixture
def real_api(backend: Api) -> Api:
    """The real cluster, in either serving mode (the tests that need its graph: exactness, owners' verdicts)."""
    return backend


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# ------------------------------------------------------------------------------------------ status
def test_status_describes_the_served_model(api: Api) -> None:
    st = api.status()
    assert st.healthy
    assert st.num_layers == 2 == len(st.embedding_dims)
    assert list(st.embedding_dims) == [HIDDEN, OUT]  # embedding_dims[i] is layer i's output width
    assert st.HasField("model")
    assert len(st.model.layer_types) == st.num_layers
    assert list(st.model.dims) == [F, *st.embedding_dims]  # input width, then each layer's
    assert len(st.model.digest) == 64 and int(st.model.digest, 16) >= 0


def test_status_reports_memory_per_partition(api: Api) -> None:
    """Each owner's engine arrays by kind and its process's resident memory (``PartitionStatus``)."""
    from clustergnn.memory import MEMORY_KINDS

    st = api.status()
    for p in st.partitions:
        mem = dict(p.memory_bytes)
        assert set(mem) == set(MEMORY_KINDS), mem
        assert mem["cache"] >= p.num_vertices * 4 * sum(st.model.dims) > 0  # every owned row, float32 at least
        assert p.rss_bytes > sum(mem.values())  # the arrays live in that process (with Python, torch, ...)
    back = convert.proto_to_status(st).partitions[0]
    assert back.memory_bytes == dict(st.partitions[0].memory_bytes) and back.rss_bytes == st.partitions[0].rss_bytes


# ------------------------------------------------------------------------------------------ layers
def test_layers_are_numbered_as_the_proto_says(api: Api) -> None:
    st = api.status()
    L = st.num_layers
    ids = [1, 2, 3]
    by_index = {}
    for i in range(L):
        r = api.get(ids, layer=i)
        assert r.layer == i
        assert r.embeddings.dim == st.embedding_dims[i]
        by_index[i] = convert.decode_matrix(r.embeddings)
    unset = api.get(ids)
    assert unset.layer == L - 1  # unset = the final embeddings, reported resolved
    assert np.array_equal(convert.decode_matrix(unset.embeddings), by_index[L - 1])
    for neg in range(-L, 0):
        r = api.get(ids, layer=neg)
        assert r.layer == neg % L
        assert np.array_equal(convert.decode_matrix(r.embeddings), by_index[neg % L])
    assert not np.array_equal(by_index[0][:, : st.embedding_dims[-1]], by_index[L - 1])


@pytest.mark.parametrize("bad", ["L", "-L-1", "big"])
def test_a_layer_out_of_range_is_invalid_argument(api: Api, bad: str) -> None:
    L = api.status().num_layers
    layer = {"L": L, "-L-1": -L - 1, "big": 2**31 - 1}[bad]
    code, details = code_of(lambda: api.get([1], layer=layer))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"[{-L}, {L - 1}]" in details and str(layer) in details


def test_input_features_are_not_a_layer_but_can_be_read(api: Api) -> None:
    st = api.status()
    r = api.get([4, 5], input_features=True)
    assert r.layer == -1
    assert r.embeddings.dim == st.model.dims[0]
    code, details = code_of(lambda: api.get([4], input_features=True, layer=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input_features" in details


def test_every_answer_names_the_model_that_produced_it(api: Api) -> None:
    digest = api.status().model.digest
    assert api.get([1]).model_digest == digest
    assert api.get([1], layer=0).model_digest == digest
    stream = api.emb.Watch(pb.WatchRequest(vertex_ids=[1, 2]), timeout=10, metadata=AUTH)
    first = next(stream)
    stream.cancel()
    assert first.initial and first.model_digest == digest and first.layer == api.status().num_layers - 1


# ------------------------------------------------------------------------------------------ versions, freshness
def test_a_write_is_visible_with_min_offsets_and_bumps_the_versions(api: Api) -> None:
    v = 6
    before_feat = api.get([v], input_features=True)
    before = api.get([v])
    feats = torch.full((1, F), float(before_feat.versions[0] + 2))
    offsets = api.apply(MutationBatch.update_features([v], feats))
    assert offsets and all(o >= 0 for o in offsets.values())
    after = api.get([v], min_offsets=offsets)
    assert all(after.watermark[p] > o for p, o in offsets.items())  # the write is visible
    assert after.versions[0] > before.versions[0]
    assert not np.array_equal(convert.decode_matrix(after.embeddings), convert.decode_matrix(before.embeddings))
    after_feat = api.get([v], input_features=True, min_offsets=offsets)
    assert after_feat.versions[0] > before_feat.versions[0]
    assert math.isfinite(after.staleness_ms) and after.staleness_ms >= 0
    assert after.answered_at_unix_ms > 0
    assert list(after.vertex_ids) == [v]


def test_duplicate_ids_are_answered_in_place(api: Api) -> None:
    r = api.get([3, 1, 3])
    m = convert.decode_matrix(r.embeddings)
    assert list(r.vertex_ids) == [3, 1, 3] and np.array_equal(m[0], m[2]) and not np.array_equal(m[0], m[1])


def test_real_answers_equal_a_single_engine(real_api: Api) -> None:
    """Exactness of what the contract serves (the fake's values are synthetic; this is the real one's)."""
    offsets = real_api.apply(MutationBatch.add_edges([2, 9], [7, 7]))
    ids = list(range(N))
    st = real_api.status()
    for i in range(st.num_layers):
        got = convert.decode_matrix(real_api.get(ids, layer=i, min_offsets=offsets).embeddings)
        ref = real_api.single.embeddings(np.array(ids), i + 1).numpy()
        assert np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5
    feats = convert.decode_matrix(real_api.get(ids, input_features=True).embeddings)
    assert np.array_equal(feats, real_api.single.embeddings(np.array(ids), 0).numpy())


# ------------------------------------------------------------------------------------------ status codes
def test_unknown_vertex_is_invalid_argument_naming_it(api: Api) -> None:
    code, details = code_of(lambda: api.get([1, 987_654]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "987654" in details


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"vertex_ids": []}, "empty"),
        ({"vertex_ids": list(range(MAX_IDS + 1))}, str(MAX_IDS)),
        ({"max_staleness_ms": -5.0}, "-5"),
        ({"max_staleness_ms": float("nan")}, "nan"),
        ({"min_offsets": {0: -3}}, "-3"),
        ({"format": 99}, "99"),
    ],
    ids=["empty", "too-many", "negative-staleness", "nan-staleness", "negative-offset", "bad-format"],
)
def test_malformed_reads_are_invalid_argument(api: Api, fields: dict, needle: str) -> None:
    fields = dict(fields)
    ids = fields.pop("vertex_ids", [1])
    code, details = code_of(lambda: api.get(ids, **fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in details.lower()


def test_an_unmet_bound_is_deadline_exceeded(api: Api) -> None:
    code, details = code_of(lambda: api.get([1], min_offsets={0: 10**9}, timeout=1.0))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


# ------------------------------------------------------------------------------------------ answer_now
def test_answer_now_with_a_bound_that_holds_is_a_normal_read(api: Api) -> None:
    offsets = api.apply(MutationBatch.update_features([11], torch.full((1, F), 0.5)))
    waited = api.get([11, 4], min_offsets=offsets)
    now = api.get([11, 4], min_offsets=offsets, answer_now=True)
    assert waited.bound_met and now.bound_met  # a read without answer_now is always met when it answers
    assert all(now.watermark[p] > o for p, o in offsets.items())
    assert list(now.versions) == list(waited.versions) and now.layer == waited.layer
    assert np.array_equal(convert.decode_matrix(now.embeddings), convert.decode_matrix(waited.embeddings))
    assert api.get([11], max_staleness_ms=1e9, min_offsets=offsets, answer_now=True).bound_met
    assert api.get([11], answer_now=True).bound_met  # no bound: answer_now changes nothing


def test_answer_now_with_a_bound_that_cannot_hold_answers_what_is_visible(api: Api) -> None:
    far = {0: 10**9}  # far beyond the log's end: cannot hold within any deadline
    for layer in ({}, {"layer": 0}):  # the final layer (the real cluster's replica) and one the owners serve
        plain = api.get([1, 2], **layer)
        before = dict(api.status().watermark)
        now = api.get([1, 2], min_offsets=far, answer_now=True, **layer)
        after = dict(api.status().watermark)
        assert not now.bound_met
        # what the cluster has: the watermark of the moment (the record asked is not visible), its staleness
        assert all(before[p] <= now.watermark[p] <= after[p] for p in before) and now.watermark[0] <= far[0]
        assert math.isfinite(now.staleness_ms) and now.staleness_ms >= 0
        assert list(now.versions) == list(plain.versions)  # what is visible: the answer of an unbounded read
        assert np.array_equal(convert.decode_matrix(now.embeddings), convert.decode_matrix(plain.embeddings))
    assert not api.get([1], min_offsets=far, max_staleness_ms=1e9, answer_now=True).bound_met  # both must hold
    # the same bound without answer_now waits for it, then fails
    code, _ = code_of(lambda: api.get([1], min_offsets=far, timeout=1.0))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # answer_now changes no other error
    code, details = code_of(lambda: api.get([1, 987_654], min_offsets=far, answer_now=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "987654" in details
    code, details = code_of(lambda: api.get([1], max_staleness_ms=-5.0, answer_now=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "-5" in details


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_a_missing_or_wrong_token_is_unauthenticated(api: Api, token: str | None) -> None:
    md = () if token is None else (("authorization", f"Bearer {token}"),)
    for call in (
        lambda: api.emb.GetEmbeddings(pb.GetEmbeddingsRequest(vertex_ids=[1]), timeout=5, metadata=md),
        lambda: api.admin.Status(pb.StatusRequest(), timeout=5, metadata=md),
        lambda: api.mut.Apply(
            convert.batch_to_request(MutationBatch.update_features([1], torch.zeros(1, F))), timeout=5, metadata=md
        ),
    ):
        code, _ = code_of(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED


def test_too_many_watches_is_resource_exhausted(api: Api) -> None:
    # the gateway's own limit (GatewayConfig.max_watches, 16 by default): open that many, then one more
    streams = []
    try:
        for _ in range(16):
            s = api.emb.Watch(pb.WatchRequest(vertex_ids=[1]), timeout=20, metadata=AUTH)
            next(s)  # the stream holds its slot once its first message arrived
            streams.append(s)
        extra = api.emb.Watch(pb.WatchRequest(vertex_ids=[1]), timeout=20, metadata=AUTH)
        code, details = code_of(lambda: next(extra))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "16" in details
    finally:
        for s in streams:
            s.cancel()


def test_errors_carry_the_exception_class(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as info:
        api.get([1, 987_654])
    md = dict(info.value.trailing_metadata() or ())
    assert md.get("clustergnn-error") == "UnknownVertexError"


# ------------------------------------------------------------------------------------------ writes
def _arrow_request(batch: MutationBatch, id_type=None) -> pb.ApplyRequest:
    import io

    import pyarrow as pa

    from clustergnn import codec

    rb = codec.encode(batch)
    if id_type is not None:
        rb = pa.RecordBatch.from_arrays(
            [rb.column(i).cast(id_type) if rb.schema.names[i] in ("src", "dst") else rb.column(i) for i in range(4)],
            names=rb.schema.names,
        )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, rb.schema) as w:
        w.write_batch(rb)
    return pb.ApplyRequest(arrow_ipc=sink.getvalue())


@pytest.mark.parametrize("case", ["int32-ids", "wrong-width", "nan", "inf-list"])
def test_a_malformed_write_is_rejected_whole_and_writes_nothing(api: Api, case: str) -> None:
    v = 9
    ok = MutationBatch.update_features([v], torch.ones(1, F))
    first = api.apply(ok)
    if case == "int32-ids":
        import pyarrow as pa

        req, needle = _arrow_request(MutationBatch.update_features([v, 2], torch.ones(2, F)), pa.int32()), "int64"
    elif case == "wrong-width":
        req, needle = convert.batch_to_request(MutationBatch.update_features([v, 2], torch.ones(2, 3))), "3 wide"
    elif case == "nan":  # built by hand: MutationBatch itself refuses non-finite features
        import pyarrow as pa

        good = _arrow_request(MutationBatch.update_features([v, 2], torch.ones(2, F)))
        rb = pa.ipc.open_stream(good.arrow_ipc).read_next_batch()
        vals = np.ones(2 * F, dtype=np.float32)
        vals[F + 2] = np.nan
        cols = [
            pa.FixedSizeListArray.from_arrays(pa.array(vals), F) if n == "features" else rb.column(i)
            for i, n in enumerate(rb.schema.names)
        ]
        sink = __import__("io").BytesIO()
        with pa.ipc.new_stream(sink, rb.schema) as w:
            w.write_batch(pa.RecordBatch.from_arrays(cols, schema=rb.schema))
        req, needle = pb.ApplyRequest(arrow_ipc=sink.getvalue()), "non-finite value nan"
    else:
        kind = int(pb.MutationKind.Value("MUTATION_KIND_UPDATE_FEATURES"))
        muts = [
            pb.Mutation(kind=kind, src=v, features=[1.0] * F),
            pb.Mutation(kind=kind, src=2, features=[math.inf] * F),
        ]
        req, needle = pb.ApplyRequest(mutations=muts), "finite"
    code, details = code_of(lambda: api.mut.Apply(req, timeout=10, metadata=AUTH))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details, details
    second = api.apply(ok)
    assert second == {p: o + 1 for p, o in first.items()}  # nothing was written in between


# ------------------------------------------------------------------------------------------ owners' verdicts
# The fake has no graph to judge writes against (tests/gateway/fakes.py): these run on the real cluster.
# Every request below spans both partitions (even ids: 0, odd: 1; an edge goes to its destination's).
def _unknown(api: Api, v: int) -> bool:
    code, details = code_of(lambda: api.get([v]))
    return code == grpc.StatusCode.INVALID_ARGUMENT and str(v) in details


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("add-existing", "3"),
        ("remove-missing-edge", "edge"),
        ("remove-unknown-vertex", "41"),
        ("edge-to-unknown", "43"),
        ("update-unknown", "47"),
        ("edge-from-unknown", "45"),
    ],
)
def test_a_write_the_owners_reject_applies_nothing(real_api: Api, case: str, needle: str) -> None:
    fresh = {"add-existing": 100, "remove-missing-edge": 102, "remove-unknown-vertex": 104}.get(case, 106)
    fresh += {"edge-from-unknown": 3, "update-unknown": 4}.get(case, 0)  # 109 is odd: the other partition
    add = MutationBatch.add_vertices([fresh], torch.ones(1, F))
    bad = {
        "add-existing": lambda: MutationBatch.add_vertices([3], torch.ones(1, F)),
        "remove-missing-edge": lambda: MutationBatch.remove_edges([0], [1]),
        "remove-unknown-vertex": lambda: MutationBatch.remove_vertices([41]),
        "edge-to-unknown": lambda: MutationBatch.add_edges([1], [43]),
        "update-unknown": lambda: MutationBatch.update_features([47], torch.ones(1, F)),
        "edge-from-unknown": lambda: MutationBatch.add_edges([45], [2]),
    }[case]()
    before = real_api.get(list(range(N)), layer=-1)
    req = convert.batch_to_request(MutationBatch.concat([add, bad]))
    code, details = code_of(lambda: real_api.mut.Apply(req, timeout=30, metadata=AUTH))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
    assert needle in details and "nothing of this write was applied" in details and "partition" in details, details
    barrier = real_api.apply(MutationBatch.update_features([5], torch.full((1, F), 0.25)))
    assert _unknown(real_api, fresh), f"vertex {fresh} of the rejected write must not exist"
    after = real_api.get(list(range(N)), layer=-1, min_offsets=barrier)
    ref = real_api.single.embeddings(np.arange(N), real_api.status().num_layers).numpy()
    got = convert.decode_matrix(after.embeddings)
    assert np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5
    assert before.watermark != after.watermark  # the barrier moved on: nothing holds the partitions back


def test_a_vertex_and_its_edges_across_partitions_apply_together(real_api: Api) -> None:
    batch = MutationBatch.concat(
        [
            MutationBatch.add_vertices([120, 121], torch.arange(2 * F, dtype=torch.float32).reshape(2, F) / F),
            MutationBatch.add_edges([120, 121, 3, 120], [121, 2, 120, 7]),
        ]
    )
    real_api.apply(batch)  # APPLIED: visible now, no bound needed
    ids = [*range(N), 120, 121]
    for i in range(real_api.status().num_layers):
        got = convert.decode_matrix(real_api.get(ids, layer=i).embeddings)
        ref = real_api.single.embeddings(np.array(ids), i + 1).numpy()
        assert np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5


def test_a_write_to_one_partition_is_judged_by_its_owner_alone(real_api: Api) -> None:
    """No coordinator round: the owner applies or rejects it at once (docs/distributed.md)."""
    bad = MutationBatch.concat(
        [MutationBatch.add_vertices([130], torch.ones(1, F)), MutationBatch.add_edges([130, 5], [2, 4])]
    )
    bad = MutationBatch.concat([bad, MutationBatch.remove_edges([7], [0])])  # 7 -> 0 does not exist
    code, details = code_of(lambda: real_api.mut.Apply(convert.batch_to_request(bad), timeout=30, metadata=AUTH))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "partition 0 rejected" in details and "7 -> 0" in details
    assert _unknown(real_api, 130)
    good = bad.slice(0, 3)
    real_api.apply(good)  # the same without the bad removal: applied, visible at once
    ids = np.array([130, 2, 4])
    got = convert.decode_matrix(real_api.get(ids.tolist()).embeddings)
    ref = real_api.single.embeddings(ids, real_api.status().num_layers).numpy()
    assert np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5


def test_a_write_retried_through_another_gateway_is_applied_once(real_api: Api) -> None:
    """The request id makes the transaction's id: owners skip a copy of a transaction they applied."""
    batch = MutationBatch.concat(
        [MutationBatch.add_vertices([140], torch.ones(1, F)), MutationBatch.add_edges([140, 140, 1], [3, 6, 140])]
    )
    req = convert.batch_to_request(batch)
    req.request_id = f"retry-{uuid.uuid4().hex[:6]}"
    first = real_api.mut.Apply(req, timeout=30, metadata=AUTH)
    assert first.state == pb.APPLY_STATE_APPLIED
    real_api.single.apply(batch)
    other = GatewayServer(real_api.backend, gateway_config()).start()  # its own request-id memory: empty
    try:
        ch, api2 = _channel_api("real-2", other.target)
        with ch:
            again = api2.mut.Apply(req, timeout=30, metadata=AUTH)
            assert again.state == pb.APPLY_STATE_APPLIED, "the copy is answered as applied"
            assert all(again.offsets[p] > first.offsets[p] for p in first.offsets), "it was written again"
            ids = [1, 3, 6, 140]
            got = convert.decode_matrix(api2.get(ids, min_offsets=dict(again.offsets)).embeddings)
    finally:
        other.stop()
    ref = real_api.single.embeddings(np.array(ids), real_api.status().num_layers).numpy()
    assert np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5, "applied once, not twice"
