"""``clustergnn produce`` (replay a dataset into Kafka) and ``clustergnn broker start|stop|status``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from clustergnn.config import ModelConfig

logger = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
DEFAULT_DIM = ModelConfig().in_dim
"""``produce --dim``'s default: the input width of the default cluster's model, so that a default
producer's feature rows are not dead-lettered (``feature_width``) by a default cluster."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_produce(sub)
    _add_broker(sub)


# ----------------------------------------------------------------------------- produce


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    value: Any = raw
    for cast in (int, float):
        try:
            value = cast(raw)
            break
        except ValueError:
            continue
    return key.replace("-", "_"), value


def _add_produce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "produce",
        help="replay a dataset into the mutation topic",
        description="Replay a dataset's mutation stream, in time order, into a Kafka topic "
        "(created with --partitions partitions and a <topic>.dlq dead-letter topic if missing).",
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="collegemsg, movielens-100k, movielens-1m, facebook-wosn-links, facebook-wosn-wall, rmat",
    )
    p.add_argument("--bootstrap", required=True, help="HOST:PORT of a Kafka broker")
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, default=None, help="mutations per second (default: as fast as possible)")
    p.add_argument(
        "--limit", type=int, default=None, help="replay at most N dataset events (an undirected event is 2 mutations)"
    )
    p.add_argument("--format", choices=("arrow", "json"), default="arrow")
    p.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="Kafka partitions = owners (default 4)")
    p.add_argument(
        "--dim",
        type=int,
        default=DEFAULT_DIM,
        help=f"feature width: the cluster's model.in_dim (default {DEFAULT_DIM}, the default cluster's); a "
        "dataset's native features are sent when this is their width (45 for movielens), seeded-random ones otherwise",
    )
    p.add_argument("--with-initial", action="store_true", help="send the initial graph (vertices, then edges) first")
    p.add_argument(
        "--batch-events", type=int, default=None, help="dataset events per batch (default: from --rate, max 16384)"
    )
    p.add_argument(
        "--max-mutations-per-record", type=int, default=None, help="Arrow: mutations per Kafka record (default 16384)"
    )
    p.add_argument(
        "--dataset-option",
        action="append",
        type=_parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="passed to the dataset loader (e.g. scale=16 for rmat)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_produce)


def _batch_events(args: argparse.Namespace) -> int:
    if args.batch_events is not None:
        if args.batch_events < 1:
            raise SystemExit(f"--batch-events must be >= 1, got {args.batch_events}")
        return int(args.batch_events)
    if args.rate is not None:  # ~10 batches a second keeps pacing smooth
        return max(1, min(16_384, int(args.rate / 10)))
    return 16_384


def _produce(args: argparse.Namespace) -> int:
    from clustergnn import datasets
    from clustergnn.partition import HashPartitionMap
    from streams.producer import DEFAULT_MAX_MUTATIONS_PER_RECORD, MutationProducer
    from streams.replay import Progress, replay
    from streams.topics import ensure_topics

    if args.dataset not in datasets.DATASETS:
        print(f"unknown dataset {args.dataset!r}; allowed: {list(datasets.DATASETS)}", file=sys.stderr)
        return 2
    if args.rate is not None and args.rate <= 0:
        print(f"--rate must be > 0, got {args.rate}", file=sys.stderr)
        return 2
    logging.getLogger("kafka").setLevel(logging.WARNING)
    graph = datasets.load(args.dataset, **dict(args.dataset_option))
    logger.info("loaded %r", graph)
    info = ensure_topics(args.bootstrap, args.topic, args.partitions)
    pm = HashPartitionMap(info.num_partitions)
    per_batch = _batch_events(args)
    batches = []
    total_events = graph.num_events if args.limit is None else min(args.limit, graph.num_events)
    if args.with_initial:
        batches.append(graph.initial_batch(args.dim))
    stream = graph.stream_batches(per_batch, args.dim, limit=args.limit)
    progress = Progress(None, enabled=not args.no_progress)

    def all_batches():  # type: ignore[no-untyped-def]
        yield from batches
        yield from stream

    producer = MutationProducer(
        args.bootstrap,
        args.topic,
        pm,
        args.format,
        max_mutations_per_record=args.max_mutations_per_record or DEFAULT_MAX_MUTATIONS_PER_RECORD,
    )
    try:
        report = replay(producer, all_batches(), rate_per_s=args.rate, progress=progress.update)
    finally:
        progress.close()
        producer.close()
    print(
        f"topic {args.topic} ({info.num_partitions} partitions{', created' if info.created else ''}), "
        f"dataset {args.dataset}: {total_events} events{' + initial graph' if args.with_initial else ''}, "
        f"format {args.format}"
    )
    for line in report.lines():
        print(line)
    return 0


# ----------------------------------------------------------------------------- broker


def _add_broker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "broker",
        help="a local Kafka-protocol broker (tansu, memory storage) on 127.0.0.1",
        description="Run the embedded broker for local use and tests. "
        "Its log is in memory: stopping it loses every topic.",
    )
    bsub = p.add_subparsers(dest="broker_command", required=True)
    for name, func, helptext in (
        ("start", _broker_start, "start it (if not running) and wait until it accepts connections"),
        ("stop", _broker_stop, "stop the broker that `start` started on this port"),
        ("status", _broker_status, "is it running and answering?"),
    ):
        q = bsub.add_parser(name, help=helptext)
        q.add_argument(
            "--port", type=int, default=9092, help="TCP port on 127.0.0.1 (default 9092; start: 0 picks a free one)"
        )
        q.set_defaults(func=func)


def _broker_start(args: argparse.Namespace) -> int:
    from streams.broker import start_detached
    from streams.errors import BrokerError

    try:
        rec = start_detached(args.port)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(rec.bootstrap)
    logger.info("broker pid %s on %s", rec.pid, rec.bootstrap)
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    from streams.broker import stop_detached

    rec = stop_detached(args.port)
    if rec is None:
        print(f"no broker recorded on port {args.port}")
        return 0
    print(f"stopped broker pid {rec.pid} on {rec.bootstrap}")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    from streams.broker import status_detached

    rec, answering = status_detached(args.port)
    if rec is None:
        print(f"no broker recorded on port {args.port}")
        return 3
    if not answering:
        print(f"broker pid {rec.pid} on {rec.bootstrap} is not answering")
        return 3
    print(f"running: pid {rec.pid}, bootstrap {rec.bootstrap}")
    return 0
