"""The one root configuration of a clustergnn deployment.

A frozen tree of small sections; every field is documented; unknown keys are rejected with the list of
allowed ones.  Read it from JSON or YAML (``Config.from_file``) or build it in code.  Environment
variables are not read here: the CLI maps its flags onto a ``Config`` in one place.

Example (JSON)::

    {"kafka": {"bootstrap": "kafka:9092"},
     "model": {"builtin": "sage", "in_dim": 64, "hidden": 128, "out_dim": 64},
     "graph": {"dataset": "facebook-wosn-links"},
     "cluster": {"partitions": 8, "collaborative": true},
     "gateway": {"host": "0.0.0.0", "port": 50051, "tls_cert": "/tls/tls.crt", "tls_key": "/tls/tls.key",
                 "tokens_file": "/auth/tokens"},
     "snapshot": {"uri": "s3://bucket/clustergnn", "interval_s": 10, "retention": 3}}
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ACTIVATIONS = ("relu", "elu", "gelu", "tanh", "none")
BUILTIN_MODELS = ("sage", "gcn", "gat", "gin", "sage-pool")


LEAN_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "262144", "MALLOC_TRIM_THRESHOLD_": "1048576"}
"""glibc's environment for ``cluster.owner_malloc = lean`` (read by glibc when a process starts)."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, ``host:port[,host:port...]``."""
    topic: str = "clustergnn.mutations"
    """The mutation topic; Kafka partition ``p`` is consumed by partition owner ``p``."""
    dead_letter_topic: str | None = None
    """Where malformed records go; default ``<topic>.dlq``."""
    create_topics: bool = True
    """Create the topics with ``cluster.partitions`` partitions when missing (off where Strimzi owns them)."""
    poll_timeout_ms: int = 20
    """How long an owner's consumer waits for records in one poll."""
    max_poll_records: int = 512
    """Records fetched per poll (each record may carry thousands of mutations)."""
    fetch_max_wait_ms: int = 5
    """How long the broker may hold an owner's fetch open waiting for data while the owner is at the log's
    end.  Kafka's default (500 ms) is added to the staleness of every mutation that arrives while a fetch
    waits, so owners keep it short."""
    fetch_behind_wait_ms: int = 500
    """The wait an owner asks for while it is behind the log's end (a start, a replay, a backlog).  Kafka
    answers at once when data is there, so this costs nothing; the embedded broker (tansu) cuts its
    storage read at the wait, and with 5 ms it returned one batch or none per fetch once a partition held
    a few thousand batches (replays crawled at about a record a second)."""

    @property
    def dlq(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dlq"


@dataclass(frozen=True)
class ModelConfig:
    """The served model (docs/models.md): trained weights plus a declared architecture (the safe default),
    a Python entry point that builds the layers, an opted-in pickled module, or a seeded builtin demo."""

    path: str | None = None
    """Trained weights: a ``torch.save(model.state_dict(), path)`` file, loaded with ``weights_only=True``
    into the architecture of ``layers`` or ``entry_point``.  A pickled module or layer list is only read
    with ``allow_pickle``.  ``None``: the seeded ``builtin`` model."""
    layers: tuple[dict, ...] | None = None
    """The architecture of ``path``'s weights, one mapping per GNN layer in order, as DGL's constructors
    take it: ``{"type": "sage", "out_dim": 128, "aggregator": "mean"}``; types sage (aggregator mean,
    gcn, pool), gcn (norm both/right/left/none), gin (aggregator sum/mean/max; apply linear or mlp), gat
    (heads, out_dim per head; residual, negative_slope); each may set ``bias`` (default true).  The
    first layer reads ``in_dim`` features; ``activation`` goes between layers."""
    entry_point: str | None = None
    """``module:function`` returning the layers (a list, an ``nn.ModuleList`` or a module with ``.layers``)
    for architectures ``layers`` cannot declare; ``path``'s weights are loaded into them when given.
    Importing it runs your code, by your choice."""
    allow_pickle: bool = False
    """Let ``path`` hold a pickled module (DGL's example style: a ``.layers`` ModuleList) or a pickled
    list of layers.  Unpickling runs whatever code the file holds: only for files you trust."""
    builtin: str = "sage"
    """A seeded demo model when no ``path`` is given: one of sage, gcn, gat, gin, sage-pool."""
    in_dim: int = 64
    """Input feature width (datasets without features get seeded random features of this width)."""
    hidden: int = 128
    """Hidden width of the builtin model."""
    out_dim: int = 64
    """Output width of the builtin model."""
    num_layers: int = 2
    """Layers of the builtin model."""
    activation: str = "relu"
    """Applied between layers (not after the last): relu, elu, gelu, tanh or none."""
    seed: int = 0
    """Seed of the builtin model's weights."""

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.layers is not None:
            _check(
                isinstance(self.layers, tuple) and bool(self.layers) and all(isinstance(x, dict) for x in self.layers),
                f"model.layers must be a non-empty list of mappings (one per layer), got {self.layers!r}",
            )
            _check(self.path is not None, "model.layers declares the architecture of model.path's weights: give path")
        if self.entry_point is not None:
            mod, _, fn = str(self.entry_point).partition(":")
            _check(
                bool(mod) and fn.isidentifier(),
                f"model.entry_point must be 'module:function', got {self.entry_point!r}",
            )
            _check(self.layers is None, "give model.layers or model.entry_point, not both")
        _check(
            isinstance(self.allow_pickle, bool), f"model.allow_pickle must be true or false, got {self.allow_pickle!r}"
        )


@dataclass(frozen=True)
class GraphConfig:
    dataset: str | None = "collegemsg"
    """Dataset whose initial graph is loaded at start (``None``: start empty)."""
    seed: int = 0
    """Seed of generated features."""


@dataclass(frozen=True)
class ClusterConfig:
    partitions: int = 4
    """Partition owners (= Kafka partitions of the mutation topic)."""
    partitioner: Literal["hash", "metis"] = "hash"
    """How vertices map to owners: ``v mod P``, or a DGL METIS partitioning of the initial graph."""
    collaborative: bool = False
    """STAG collaborative serving: finish the last layer at read time."""
    replica_finish: bool = False
    """Replica-finish serving: owners stop each round's update at the last layer's aggregates and publish
    those (with in-degrees and self terms); the coordinator's replica finishes the asked rows at read
    time, so final-layer reads need no owner, as in eager serving (docs/gateway.md, "Replica-finish
    serving").  A GAT last layer stays eager.  Exclusive with ``collaborative``."""
    device: str = "auto"
    """Where each owner keeps its tensors: auto (its GPU if Ray gave it one), cpu, cuda."""
    actor_num_cpus: float = 0.25
    """CPUs reserved per owner actor (fractional, so P owners fit a small machine)."""
    actor_num_gpus: float = 0.0
    """GPUs per owner actor (fractional, e.g. 0.25 puts four owners on one GPU)."""
    hub_window_ms: float = 0.0
    """Hold each busy round open at least this long (D3-GNN's windowing): all changes of a vertex within
    a round travel as one message per reader partition and layer, so a longer window sends hubs' deltas
    less often, at the price of up to this much staleness.  0 = rounds back to back."""
    ray_address: str | None = None
    """An existing Ray cluster (``auto`` inside KubeRay pods); ``None`` starts a local one on 127.0.0.1."""
    ray_num_cpus: int | None = None
    """CPUs a locally started Ray reports; more than the cores avoids actor-placement deadlocks."""
    owner_malloc: Literal["default", "lean"] = "default"
    """glibc malloc settings of the owner processes (and spares).  ``lean`` (``LEAN_MALLOC_ENV``: two arenas,
    mmap threshold 256 KiB, trim threshold 1 MiB) hands freed memory back to the system: ~20% less RSS per
    owner, which is what lets P = 4 owners hold a products-sized graph on a 24 GB machine, at the price of
    slower rounds (each round's temporaries are fresh pages: visible p50 at 2k mutations/s 223 -> 486 ms
    at R-MAT scale 18; docs/distributed.md, "lean malloc").  Set in the owners' Ray runtime environment,
    so it holds in a joined Ray (KubeRay) too."""
    owner_niceness: int = 0
    """Unix niceness of the owner processes of a locally started Ray (0..19).  Ray's own default for its
    workers is 15, under which the driver, the broker and any load at 0 starve the owners on a busy
    machine (the long chaos run: replays crawled at about a record per several polls and recoveries did
    not end).  A joined Ray (``ray_address``) keeps its own setting (``RAY_worker_niceness``), and so does
    a local one when that variable is set."""
    pending_timeout_s: float = 10.0
    """The backstop for an edge waiting for a source vertex no partition knows yet, and for a transaction
    without a decision: dead-lettered (``unknown_vertex``) or aborted after this many seconds *during which
    every partition was caught up with its log* (the calm clock: time spent behind under overload does not
    count, so overload alone never drops valid input).  Normally an edge goes much sooner, on evidence:
    once every other partition has applied everything produced until 250 ms after the edge
    (docs/distributed.md, "When an edge's source never comes")."""
    spare_owners: int = 2
    """Idle owner processes kept started (each with Ray's resources of an owner, ~0.4 GB): a crashed owner
    is replaced by the oldest without starting a process and importing torch (10+ s on a busy 2-core
    machine).  Two, so that the spare started after one recovery has the time of a whole fault interval
    to get ready before it is needed: with one, a kill that came within ~15 s of the last recovery
    waited for the new spare's imports (owner recovery 14-25 s instead of 5-10 s in the long chaos run).
    0 = none (a recovery then starts a process)."""
    placement: Literal["spread", "pack", "pinned"] = "spread"
    """Where Ray puts the partition owners and spare owners (docs/distributed.md, "Several nodes"):
    ``spread`` over the nodes with CPUs (Ray's SPREAD: a lost node takes as few owners as possible, and the
    spares land on other nodes than the owners they stand in for, mostly), ``pack`` onto one node while it
    has room (the node with the most CPUs; less network between owners), or ``pinned``: partition ``p`` on
    the node whose address is ``placement_nodes[p]``.  ``pack`` and ``pinned`` are preferences (Ray's soft
    node affinity): an owner whose node is gone or full is re-created elsewhere, never left unplaced.  The
    coordinator and the gateway run where ``clustergnn serve`` runs (in KubeRay, the head pod)."""
    placement_nodes: tuple[str, ...] | None = None
    """With ``placement = pinned``: the node address (Ray's node IP, a pod's IP in KubeRay) of each
    partition's owner, ``partitions`` of them."""
    idle_long_poll: bool = True
    """When nothing is pending, stop rounds: the driver long-polls the log's end instead (fetches the broker
    holds 50 ms) and pings the owners every second, and a read that finds freshness last proven more than
    10 ms ago proves it with one fetch of every partition's end first (docs/gateway.md, "Freshness at idle").
    ``false`` keeps rounds back to back, each owner polling its partitions: staleness ~30 ms at about a core
    on an idle cluster (P = 4), for comparisons (``scripts/bench_idle.py``)."""

    def __post_init__(self) -> None:
        if isinstance(self.placement_nodes, list):  # JSON and YAML give lists
            object.__setattr__(self, "placement_nodes", tuple(self.placement_nodes))


@dataclass(frozen=True)
class SnapshotConfig:
    """Periodic snapshots of every owner at a consistent cut (``docs/snapshots.md``); a restarted driver
    resumes from the newest complete one plus a replay of each Kafka partition from its offsets."""

    uri: str | None = None
    """Where snapshots go: a local directory or any ``pyarrow.fs`` URI (``s3://bucket/prefix?...``).
    ``None``: snapshots off (a restarted driver replays every partition from its earliest offset)."""
    interval_s: float = 10.0
    """Take a snapshot when this long has passed since the last one started (and anything changed)."""
    interval_mutations: int = 0
    """Also take one when this many mutations were applied since the last one; 0 = no mutation trigger."""
    retention: int = 3
    """Complete snapshots kept; older ones are deleted after each commit."""

    def __post_init__(self) -> None:
        if isinstance(self.uri, os.PathLike):
            object.__setattr__(self, "uri", os.fspath(self.uri))
        _check(
            self.uri is None or (isinstance(self.uri, str) and self.uri.strip() != ""),
            f"snapshot.uri must be a non-empty path or URI, or null, got {self.uri!r}",
        )
        _check(
            isinstance(self.interval_s, (int, float))
            and not isinstance(self.interval_s, bool)
            and math.isfinite(self.interval_s)
            and self.interval_s > 0,
            f"snapshot.interval_s must be a finite number > 0, got {self.interval_s!r}",
        )
        _check(
            isinstance(self.interval_mutations, int)
            and not isinstance(self.interval_mutations, bool)
            and self.interval_mutations >= 0,
            f"snapshot.interval_mutations must be an integer >= 0 (0 = off), got {self.interval_mutations!r}",
        )
        _check(
            isinstance(self.retention, int) and not isinstance(self.retention, bool) and self.retention >= 1,
            f"snapshot.retention must be an integer >= 1, got {self.retention!r}",
        )


@dataclass(frozen=True)
class GatewayConfig:
    """How the gRPC gateway listens, secures and limits itself; ``GatewayServer`` takes it as it is.

    TLS and bearer tokens are both required to serve unless ``insecure_local`` is set, which only a
    loopback ``host`` may use; with it, either may still be given and is then enforced.  That requirement
    is checked when a gateway is built (:meth:`require_secure`), so the config of a cluster that runs no
    gateway needs neither.
    """

    host: str = "127.0.0.1"
    """Address to bind: loopback unless deployed.  Anything but loopback requires TLS and tokens."""
    port: int = 50051
    """gRPC port; 0 picks a free one (read it back from ``GatewayServer.port``)."""
    metrics_port: int | None = 9464
    """Port of the Prometheus endpoint, on ``host``; 0 picks a free one, ``None`` disables it."""
    tls_cert: str | None = None
    """PEM certificate chain of the server; together with ``tls_key`` turns TLS on."""
    tls_key: str | None = None
    """PEM private key of the server."""
    tokens_file: str | None = None
    """File of accepted bearer tokens (one per line or comma-separated, ``#`` comments); the tokens in
    ``$CLUSTERGNN_GATEWAY_TOKENS`` are accepted too.  The file is read when the gateway starts."""
    tokens: tuple[str, ...] | None = field(default=None, repr=False)  # never print secrets
    """Accepted bearer tokens given inline (tests, embedding); prefer ``tokens_file`` in deployments.
    With neither, authentication is off (allowed only with ``insecure_local``)."""
    insecure_local: bool = False
    """Explicitly allow running without TLS and/or tokens, on a loopback host only."""
    max_ids_per_request: int = 10_000
    """Largest number of vertex ids in one read: a GetEmbeddings or Watch request at the gateway, and a
    ``Cluster.read`` call (the one limit of both)."""
    max_mutations_per_request: int = 1_000_000
    """Largest number of mutations one Apply may carry."""
    max_message_bytes: int = 64 * 1024 * 1024
    """gRPC send/receive message limit."""
    default_deadline_s: float = 5.0
    """Longest a read may wait for its freshness bound; a shorter client gRPC deadline wins."""
    max_workers: int = 32
    """Server threads; each in-flight unary call and each open Watch holds one."""
    max_watches: int = 16
    """Concurrent Watch streams; more are refused with RESOURCE_EXHAUSTED so reads keep threads."""
    watch_poll_interval_s: float = 0.05
    """How often a Watch re-reads its vertices to detect new versions."""
    health_poll_interval_s: float = 0.5
    """How often the health monitor asks ``backend.status()``."""
    apply_dedup_window_s: float = 600.0
    """How long an Apply's ``request_id`` is remembered: a retry within it is answered with the first call's
    offsets and writes nothing (docs/gateway.md, "Retrying writes")."""

    def __post_init__(self) -> None:
        # paths may be given as Path and tokens as a list (JSON): store the declared types
        for name in ("tls_cert", "tls_key", "tokens_file"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if isinstance(self.tokens, list):
            object.__setattr__(self, "tokens", tuple(self.tokens))
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None or name == "port":
                _check(
                    isinstance(value, int) and 0 <= value <= 65535,
                    f"gateway.{name} must be in [0, 65535]{' or null' if name == 'metrics_port' else ''}, "
                    f"got {value!r}",
                )
        _check(
            (self.tls_cert is None) == (self.tls_key is None),
            f"TLS needs both gateway.tls_cert and gateway.tls_key, got cert={self.tls_cert!r}, key={self.tls_key!r}",
        )
        if self.tokens is not None:
            _check(
                isinstance(self.tokens, tuple)
                and bool(self.tokens)
                and all(isinstance(t, str) and t.strip() for t in self.tokens),
                f"gateway.tokens must be a non-empty tuple of non-blank strings or None, "
                f"got {len(self.tokens)} token(s)",
            )
        if self.insecure_local:
            _check(
                is_loopback(self.host),
                f"gateway.insecure_local is only allowed on a loopback host, got host={self.host!r}",
            )
        for name in (
            "max_ids_per_request",
            "max_mutations_per_request",
            "max_message_bytes",
            "max_workers",
            "max_watches",
        ):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"gateway.{name} must be an integer >= 1, got {value!r}")
        for name in ("default_deadline_s", "watch_poll_interval_s", "health_poll_interval_s", "apply_dedup_window_s"):
            value = getattr(self, name)
            _check(
                isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                f"gateway.{name} must be a finite number > 0, got {value!r}",
            )

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def auth_enabled(self) -> bool:
        return self.tokens is not None or self.tokens_file is not None

    def require_secure(self) -> None:
        """Raise :class:`ConfigError` unless TLS and tokens are both on, or ``insecure_local`` is set."""
        if self.insecure_local:
            return
        missing = [name for name, off in (("TLS", not self.tls_enabled), ("tokens", not self.auth_enabled)) if off]
        _check(
            not missing,
            f"the gateway requires TLS and bearer tokens; missing {missing}. "
            "Set gateway.insecure_local=True to run without them on a loopback host",
        )


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return _build(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        return cls.from_dict(read_file(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> Config:
        """A copy with some fields changed: ``cfg.replace(cluster={"partitions": 2})``."""
        data = self.to_dict()
        for name, values in sections.items():
            if name not in data:
                raise ConfigError(f"unknown config section {name!r}; allowed: {sorted(data)}")
            data[name].update(values)
        return Config.from_dict(data)


def read_file(path: str | Path) -> dict[str, Any]:
    """A config file's mapping (JSON, or YAML for ``.yaml``/``.yml``), not yet validated: what
    ``Config.from_file`` builds, and what a CLI merges its flags into before building it."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if cls is ClusterConfig and "spare_owner" in data:
        raise ConfigError(
            f"{where}.spare_owner was replaced by {where}.spare_owners (how many idle owner processes to keep "
            f"started, default 2; 0 for none), got {data['spare_owner']!r}"
        )
    if cls is ClusterConfig and "snapshot_dir" in data:
        raise ConfigError(
            f"{where}.snapshot_dir was replaced by snapshot.uri (a directory or pyarrow.fs URI; see "
            f"docs/distributed.md), got {data['snapshot_dir']!r}"
        )
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        nested = sub is not None and dataclasses.is_dataclass(sub)
        kwargs[name] = _build(sub, value, f"{where}.{name}") if nested else value
    return cls(**kwargs)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Cross-field and range checks of the sections without a ``__post_init__`` of their own."""
    c, m, k = cfg.cluster, cfg.model, cfg.kafka
    _check(
        isinstance(c.partitions, int) and c.partitions >= 1,
        f"cluster.partitions must be an integer >= 1, got {c.partitions!r}",
    )
    _check(c.partitioner in ("hash", "metis"), f"cluster.partitioner must be 'hash' or 'metis', got {c.partitioner!r}")
    _check(c.actor_num_cpus >= 0 and c.actor_num_gpus >= 0, "cluster.actor_num_cpus/actor_num_gpus must be >= 0")
    _check(c.hub_window_ms >= 0, f"cluster.hub_window_ms must be >= 0, got {c.hub_window_ms!r}")
    _check(
        isinstance(c.replica_finish, bool), f"cluster.replica_finish must be true or false, got {c.replica_finish!r}"
    )
    _check(
        not (c.collaborative and c.replica_finish),
        "cluster.collaborative and cluster.replica_finish are two ways to serve the last layer: choose one",
    )
    _check(
        c.owner_malloc in ("default", "lean"),
        f"cluster.owner_malloc must be 'default' or 'lean', got {c.owner_malloc!r}",
    )
    _check(
        isinstance(c.owner_niceness, int) and not isinstance(c.owner_niceness, bool) and 0 <= c.owner_niceness <= 19,
        f"cluster.owner_niceness must be an integer in 0..19, got {c.owner_niceness!r}",
    )
    _check(
        isinstance(c.spare_owners, int) and not isinstance(c.spare_owners, bool) and 0 <= c.spare_owners <= 8,
        f"cluster.spare_owners must be an integer in 0..8, got {c.spare_owners!r}",
    )
    _check(
        isinstance(c.pending_timeout_s, (int, float))
        and math.isfinite(c.pending_timeout_s)
        and c.pending_timeout_s > 0,
        f"cluster.pending_timeout_s must be a finite number > 0, got {c.pending_timeout_s!r}",
    )
    _check(
        c.placement in ("spread", "pack", "pinned"),
        f"cluster.placement must be 'spread', 'pack' or 'pinned', got {c.placement!r}",
    )
    if c.placement == "pinned":
        nodes = c.placement_nodes
        _check(
            isinstance(nodes, tuple)
            and len(nodes) == c.partitions
            and all(isinstance(x, str) and x.strip() for x in nodes),
            f"cluster.placement = 'pinned' needs cluster.placement_nodes: one node address per partition "
            f"({c.partitions}), got {nodes!r}",
        )
    else:
        _check(
            c.placement_nodes is None,
            f"cluster.placement_nodes is only read with placement = 'pinned' (placement is {c.placement!r}), "
            f"got {c.placement_nodes!r}",
        )
    _check(
        isinstance(c.idle_long_poll, bool), f"cluster.idle_long_poll must be true or false, got {c.idle_long_poll!r}"
    )
    _check(
        c.device in ("auto", "cpu") or c.device.startswith("cuda"),
        f"cluster.device must be auto, cpu or cuda[:N], got {c.device!r}",
    )
    _check(m.activation in ACTIVATIONS, f"model.activation must be one of {ACTIVATIONS}, got {m.activation!r}")
    _check(
        m.path is not None or m.entry_point is not None or m.builtin in BUILTIN_MODELS,
        f"model.builtin must be one of {BUILTIN_MODELS}, got {m.builtin!r}",
    )
    for name in ("in_dim", "hidden", "out_dim", "num_layers"):
        v = getattr(m, name)
        _check(isinstance(v, int) and v >= 1, f"model.{name} must be an integer >= 1, got {v!r}")
    _check(
        k.poll_timeout_ms >= 0 and k.max_poll_records >= 1,
        f"kafka.poll_timeout_ms must be >= 0 and kafka.max_poll_records >= 1, "
        f"got {k.poll_timeout_ms!r} and {k.max_poll_records!r}",
    )
    _check(k.fetch_max_wait_ms >= 0, f"kafka.fetch_max_wait_ms must be >= 0, got {k.fetch_max_wait_ms!r}")
    _check(
        isinstance(k.fetch_behind_wait_ms, int) and k.fetch_behind_wait_ms >= 0,
        f"kafka.fetch_behind_wait_ms must be an integer >= 0, got {k.fetch_behind_wait_ms!r}",
    )
    _check(bool(k.topic), "kafka.topic must not be empty")
