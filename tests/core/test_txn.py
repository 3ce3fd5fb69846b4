"""Transactions across partitions (clustergnn/txn.py): the owners' dry run and the coordinator's book."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustergnn import Engine, MutationBatch, MutationError
from clustergnn.partition import HashPartitionMap, split_by_owner
from clustergnn.partitioned import LocalCluster
from clustergnn.txn import ABORTED, TxnBook, TxnTag, TxnVote
from tests.core.models import F_IN, build
from tests.core.test_partitioned import assert_cluster_matches

# HashPartitionMap(2) owns even ids in 0 and odd ids in 1 (checked below); edges route to dst's owner


def _setup(model: str = "sage-mean"):
    layers = build(model)
    pm = HashPartitionMap(2)
    cluster = LocalCluster.from_layers(layers, F_IN, pm)
    single = Engine.from_layers(layers, F_IN)
    gen = torch.Generator().manual_seed(3)
    init = MutationBatch.concat(
        [
            MutationBatch.add_vertices(np.arange(8), torch.randn(8, F_IN, generator=gen)),
            MutationBatch.add_edges([0, 1, 2, 3, 5], [1, 2, 3, 4, 6]),
        ]
    )
    cluster.apply(init)
    single.apply(init)
    return layers, pm, cluster, single


def _fingerprint(cluster: LocalCluster) -> list:
    out = []
    for e in cluster.engines:
        ids = np.sort(e.owned_ids())
        out.append((ids.tolist(), e.num_edges, int(e.ghost.sum()), e.embeddings(ids).clone(), e.versions(ids).tolist()))
    return out


def _same(a: list, b: list) -> None:
    for x, y in zip(a, b, strict=True):
        assert x[:3] == y[:3] and x[4] == y[4]
        assert torch.equal(x[3], y[3])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda: MutationBatch.add_vertices([2], torch.zeros(1, F_IN)), "already|exists"),
        (lambda: MutationBatch.remove_edges([4], [2]), "no edge|not an edge|missing|does not exist"),
        (lambda: MutationBatch.remove_vertices([40]), "unknown vertex"),
        (lambda: MutationBatch.update_features([42], torch.zeros(1, F_IN)), "unknown vertex"),
    ],
)
@pytest.mark.parametrize("model", ["sage-mean", "sage-pool", "gat"])
def test_check_rejects_what_ingest_would_and_changes_nothing(bad, match, model) -> None:
    layers, pm, cluster, single = _setup(model)
    batch = bad()
    (p,) = split_by_owner(batch, pm).keys()
    eng = cluster.engines[p]
    before = _fingerprint(cluster)
    # a valid prefix in the same part (a new vertex of partition p) must be undone too
    part = MutationBatch.concat([MutationBatch.add_vertices([100 + p], torch.ones(1, F_IN)), batch])
    with pytest.raises(MutationError, match=match):
        eng.check(part)
    _same(before, _fingerprint(cluster))
    # and the engines go on exactly
    more = MutationBatch.add_edges([6, 7], [0, 3])
    cluster.apply(more)
    single.apply(more)
    assert_cluster_matches(cluster, single, layers)


def test_check_of_a_valid_part_reports_unknown_sources_and_changes_nothing() -> None:
    layers, pm, cluster, single = _setup("graphconv-both")
    assert pm.owner(np.array([0, 1, 2, 3])).tolist() == [0, 1, 0, 1]
    # into partition 0 (dst 2 and 4 are even): 7 -> 2 (7 known to partition 0? it has no edge from 7 yet),
    # 51 -> 4 (51 exists nowhere), and a feature update of 2
    part = MutationBatch.concat(
        [
            MutationBatch.add_edges([3, 51], [2, 4]),
            MutationBatch.update_features([2], torch.full((1, F_IN), 0.5)),
        ]
    )
    before = _fingerprint(cluster)
    unknown = cluster.engines[0].check(part)
    assert 51 in unknown.tolist() and 3 not in unknown.tolist()
    _same(before, _fingerprint(cluster))
    ok = MutationBatch.concat(
        [MutationBatch.add_edges([3], [2]), MutationBatch.update_features([2], torch.ones(1, F_IN))]
    )
    assert cluster.engines[0].check(ok).size == 0
    cluster.apply(ok)
    single.apply(ok)
    assert_cluster_matches(cluster, single, layers)


def _vote(tag, p, rnd=1, ts=1000, **kw) -> TxnVote:
    return TxnVote(tag, p, rnd, ts, **kw)


def test_tag_round_trips_and_bad_tags_are_named() -> None:
    t = TxnTag("abc", (0, 3))
    assert TxnTag.decode(t.encode()) == t
    for raw in (b"abc", b"abc;x", b";1", b"abc;2,1", b"\xff;1"):
        with pytest.raises(ValueError, match="transaction"):
            TxnTag.decode(raw)


def test_book_commits_when_every_part_votes_ok() -> None:
    book = TxnBook(3, grace_ms=250, backstop_s=10)
    t = TxnTag("t", (0, 2))
    book.observe([_vote(t, 0)], 0.0)
    assert book.decide(1, [None] * 3, 0.0) == [], "a part is missing and nothing says it never comes"
    book.observe([_vote(t, 2)], 0.1)
    (d,) = book.decide(2, [None] * 3, 0.1)
    assert d.commit and d.parts == (0, 2) and book.verdicts["t"] is d


def test_book_aborts_a_rejected_part_naming_it() -> None:
    book = TxnBook(2, grace_ms=250, backstop_s=10)
    t = TxnTag("t", (0, 1))
    book.observe([_vote(t, 0), _vote(t, 1, error_code="invalid_mutation", error="vertex 5 already exists")], 0.0)
    (d,) = book.decide(1, [None, None], 0.0)
    assert not d.commit and d.culprit == 1 and "vertex 5 already exists" in d.message
    assert d.reason_for(1) == "invalid_mutation" and d.reason_for(0) == ABORTED


def test_book_unknown_sources_added_by_another_part_commit() -> None:
    book = TxnBook(2, grace_ms=250, backstop_s=10)
    t = TxnTag("t", (0, 1))
    book.observe([_vote(t, 0, unknown=(9,)), _vote(t, 1, adds=(9,))], 0.0)
    (d,) = book.decide(1, [None, None], 0.0)
    assert d.commit


def test_book_unknown_sources_abort_only_after_a_later_vote() -> None:
    book = TxnBook(3, grace_ms=250, backstop_s=100)
    t = TxnTag("t", (0, 1))
    book.observe([_vote(t, 0, rnd=1, unknown=(9,)), _vote(t, 1, rnd=1)], 0.0)
    assert book.decide(1, [0, 0, 1100], 0.0) == [], "partition 2 has not applied past ts + grace"
    assert book.decide(2, [0, 0, 1300], 0.0) == [], "settled now, but the vote predates it"
    book.observe([_vote(t, 0, rnd=3, unknown=(9,)), _vote(t, 1, rnd=3)], 0.0)
    (d,) = book.decide(3, [0, 0, 1300], 0.0)
    assert not d.commit and d.code == "unknown_vertex" and d.culprit == 0 and "first: 9" in d.message


def test_book_missing_part_aborts_when_its_partition_is_past_it_and_backstop() -> None:
    book = TxnBook(2, grace_ms=250, backstop_s=5)
    t = TxnTag("t", (0, 1))
    book.observe([_vote(t, 0)], 0.0)
    assert book.decide(1, [0, 1200], 0.0) == []
    assert book.decide(2, [0, 1300], 0.0, replaying=True) == [], "no timeout decision while replaying"
    (d,) = book.decide(3, [0, 1300], 0.0)
    assert not d.commit and "[1] never arrived" in d.message
    u = TxnTag("u", (0, 1))
    book.observe([_vote(u, 0)], 10.0)
    assert book.decide(4, [0, None], 14.0) == []
    (d,) = book.decide(5, [0, None], 15.5)
    assert not d.commit and "no decision after 5 s" in d.message


def test_votes_on_decided_transactions_change_nothing_and_only_later_ones_hear_it_again() -> None:
    book = TxnBook(2, grace_ms=250, backstop_s=5)
    t = TxnTag("t", (0, 1))
    book.observe([_vote(t, 0, rnd=4), _vote(t, 1, rnd=5)], 0.0)
    (d,) = book.decide(5, [None, None], 0.0)
    assert d.commit and d.round_id == 5
    # the same reports read again (a prefetched ingest): nothing to send, or an owner keeps it forever
    assert book.observe([_vote(t, 0, rnd=4), _vote(t, 1, rnd=5)], 0.0) == ([], [])
    # a vote taken after the decision (a replay, or a copy with the same id) is sent the decision again
    _, resend = book.observe([_vote(t, 1, rnd=6, error_code="invalid_mutation", error="x")], 0.0)
    assert resend == [(1, d)]
    assert book.decide(6, [None, None], 0.0) == [] and book.verdicts["t"].commit


def test_a_transaction_of_one_partition_is_decided_by_its_owner() -> None:
    from clustergnn.txn import decides_alone

    book = TxnBook(2, grace_ms=250, backstop_s=5)
    one, two = TxnTag("a", (1,)), TxnTag("b", (0, 1))
    assert decides_alone(_vote(one, 1)) and decides_alone(_vote(one, 1, error_code="invalid_mutation", error="x"))
    assert not decides_alone(_vote(one, 1, unknown=(8,))), "an unknown source needs the other partitions"
    assert not decides_alone(_vote(two, 1)), "a part of a wider transaction needs the other votes"
    (d,), resend = book.observe(
        [_vote(one, 1, final=True, error_code="invalid_mutation", error="vertex 3 exists")], 0.0
    )
    assert resend == []
    assert not d.commit and d.culprit == 1 and "vertex 3 exists" in d.message and book.verdicts["a"] is d
    assert book.open == {} and book.decide(1, [None, None], 0.0) == []


def test_committed_ids_are_kept_for_the_window_and_round_trip() -> None:
    from clustergnn.txn import CommittedTxns

    done = CommittedTxns(window_ms=1000, max_entries=3)
    for i, ts in enumerate([0, 500, 900, 1200]):
        done.add(f"t{i}", ts)
    assert "t0" not in done and "t1" in done and len(done) == 3, "t0 is older than the window"
    done.add("t4", 1300)
    assert "t1" not in done and len(done) == 3, "at most max_entries"
    back = CommittedTxns.from_arrays(done.arrays(), window_ms=1000)
    assert [k for k in ("t2", "t3", "t4") if k in back] == ["t2", "t3", "t4"]
    assert len(CommittedTxns.from_arrays({}, window_ms=1000)) == 0


def test_a_part_behind_deferred_mutations_is_not_judged_until_they_apply() -> None:
    """An edge deferred for its unknown source does not exist yet: a transaction's part that removes it
    would be refused by ``check``; ``behind_deferred`` says it waits instead (the chaos run found every
    transaction aborted this way)."""
    _, pm, cluster, _ = _setup()
    eng = cluster.engines[0]
    eng.begin_round(eng.round + 1)
    deferred = eng.ingest(MutationBatch.add_edges([51], [2]))  # 51: partition 1's, never heard of here
    assert len(deferred) == 1
    removal = MutationBatch.remove_edges([51], [2])
    assert eng.behind_deferred(removal).tolist() == [2, 51]
    with pytest.raises(MutationError, match="does not exist"):
        eng.check(removal)
    assert eng.behind_deferred(MutationBatch.update_features([4], torch.ones(1, F_IN))).size == 0
    assert cluster.engines[1].behind_deferred(removal).size == 0, "no round open there: nothing deferred"


def test_book_waits_for_a_part_behind_deferred_mutations() -> None:
    from clustergnn.txn import decides_alone

    book = TxnBook(2, grace_ms=250, backstop_s=5)
    t = TxnTag("t", (0, 1))
    book.observe([_vote(t, 0, rnd=1, behind=(2, 51)), _vote(t, 1, rnd=1)], 0.0)
    assert book.decide(1, [5000, 5000], 1.0) == [], "every part voted and the others are past it: still waits"
    book.observe([_vote(t, 0, rnd=2)], 1.0)  # the deferred edge applied: judged now
    (d,) = book.decide(2, [5000, 5000], 1.0)
    assert d.commit
    u = TxnTag("u", (0, 1))
    book.observe([_vote(u, 0, behind=(2,)), _vote(u, 1)], 10.0)
    assert book.decide(3, [None, None], 14.0) == []
    (d,) = book.decide(4, [None, None], 15.5)
    assert not d.commit and "waits behind earlier mutations" in d.message
    assert not decides_alone(_vote(TxnTag("a", (0,)), 0, behind=(2,))), "it cannot be judged yet"


def test_book_counts_only_votes_from_after_every_part_had_voted() -> None:
    """Every partition holds a part (nobody outside to wait for), and the votes come from the next
    round's ingest (fused, labelled round + 1): a vertex another part's partition applied in that ingest
    is announced only in that round, so a vote of the same label that still misses it is no verdict."""
    book = TxnBook(2, grace_ms=250, backstop_s=100)
    t = TxnTag("t", (0, 1))
    book.observe([_vote(t, 0, rnd=6, unknown=(9,)), _vote(t, 1, rnd=6)], 0.0)
    assert book.decide(5, [None, None], 0.0) == [], "a vote of round 6 may predate the announcement of 9"
    book.observe([_vote(t, 0, rnd=7)], 0.0)  # round 7's ingest knows 9
    (d,) = book.decide(6, [None, None], 0.0)
    assert d.commit
    u = TxnTag("u", (0, 1))
    book.observe([_vote(u, 0, rnd=6, unknown=(9,)), _vote(u, 1, rnd=6)], 0.0)
    assert book.decide(5, [None, None], 0.0) == []
    book.observe([_vote(u, 0, rnd=7, unknown=(9,))], 0.0)
    (d,) = book.decide(6, [None, None], 0.0)
    assert not d.commit and d.code == "unknown_vertex" and "first: 9" in d.message
