"""The one root configuration of a clustergnn deployment.

A frozen tree of small sections; every field is documented; unknown keys are rejected with the list of
allowed ones.  Read it from JSON or YAML (``Config.from_file``) or build it in code.  Environment
variables are not read here: the CLI maps its flags onto a ``Config`` in one place.

Example (JSON)::

    {"kafka": {"bootstrap": "kafka:9092", "partitions": 8},
     "model": {"builtin": "sage", "in_dim": 64, "hidden": 128, "out_dim": 64},
     "graph": {"dataset": "facebook-wosn-links"},
     "cluster": {"collaborative": true},
     "gateway": {"host": "0.0.0.0", "port": 50051, "tls_cert": "/tls/tls.crt", "tls_key": "/tls/tls.key",
                 "tokens_file": "/auth/tokens"}}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ACTIVATIONS = ("relu", "elu", "gelu", "tanh", "none")
BUILTIN_MODELS = ("sage", "gcn", "gat", "gin", "sage-pool")


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
    """How long the broker may hold a fetch open waiting for data.  Kafka's default (500 ms) is added
    to the staleness of every mutation that arrives while a fetch waits, so owners keep it short."""

    @property
    def dlq(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dlq"


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None
    """A ``torch.save``-d list (or ``nn.ModuleList``) of trained DGL conv layers; overrides ``builtin``."""
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
    snapshot_dir: str | None = None
    """Where owners write snapshots (for recovery); ``None`` disables snapshots."""


@dataclass(frozen=True)
class GatewayConfigSection:
    host: str = "127.0.0.1"
    """Address the gRPC gateway binds (loopback unless deployed)."""
    port: int = 50051
    """gRPC port (0 picks a free one)."""
    metrics_port: int | None = 9464
    """Prometheus endpoint port (``None`` disables it)."""
    tls_cert: str | None = None
    """PEM certificate file; with ``tls_key`` turns TLS on."""
    tls_key: str | None = None
    """PEM private key file."""
    tokens_file: str | None = None
    """File with one bearer token per line."""
    insecure_local: bool = False
    """Explicitly allow no TLS and no tokens (only on a loopback host)."""


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    gateway: GatewayConfigSection = field(default_factory=GatewayConfigSection)

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return _build(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return cls.from_dict(data)

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


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub is not None and dataclasses.is_dataclass(sub) else value
    return cls(**kwargs)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    c, m, g, k = cfg.cluster, cfg.model, cfg.gateway, cfg.kafka
    _check(isinstance(c.partitions, int) and c.partitions >= 1, f"cluster.partitions must be an integer >= 1, got {c.partitions!r}")
    _check(c.partitioner in ("hash", "metis"), f"cluster.partitioner must be 'hash' or 'metis', got {c.partitioner!r}")
    _check(c.actor_num_cpus >= 0 and c.actor_num_gpus >= 0, "cluster.actor_num_cpus/actor_num_gpus must be >= 0")
    _check(c.hub_window_ms >= 0, f"cluster.hub_window_ms must be >= 0, got {c.hub_window_ms!r}")
    _check(c.device in ("auto", "cpu") or c.device.startswith("cuda"), f"cluster.device must be auto, cpu or cuda[:N], got {c.device!r}")
    _check(m.activation in ACTIVATIONS, f"model.activation must be one of {ACTIVATIONS}, got {m.activation!r}")
    _check(m.path is not None or m.builtin in BUILTIN_MODELS, f"model.builtin must be one of {BUILTIN_MODELS}, got {m.builtin!r}")
    for name in ("in_dim", "hidden", "out_dim", "num_layers"):
        v = getattr(m, name)
        _check(isinstance(v, int) and v >= 1, f"model.{name} must be an integer >= 1, got {v!r}")
    _check(isinstance(g.port, int) and 0 <= g.port < 65536, f"gateway.port must be in [0, 65535], got {g.port!r}")
    _check((g.tls_cert is None) == (g.tls_key is None), "gateway.tls_cert and gateway.tls_key go together")
    _check(k.poll_timeout_ms >= 0 and k.max_poll_records >= 1, "kafka.poll_timeout_ms must be >= 0 and max_poll_records >= 1")
    _check(k.fetch_max_wait_ms >= 0, f"kafka.fetch_max_wait_ms must be >= 0, got {k.fetch_max_wait_ms!r}")
    _check(bool(k.topic), "kafka.topic must not be empty")
