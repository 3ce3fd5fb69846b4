from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbeddingFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBEDDING_FORMAT_UNSPECIFIED: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_RAW_F32: _ClassVar[EmbeddingFormat]
    EMBEDDING_FORMAT_ARROW_IPC: _ClassVar[EmbeddingFormat]

class MutationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MUTATION_KIND_UNSPECIFIED: _ClassVar[MutationKind]
    MUTATION_KIND_ADD_VERTEX: _ClassVar[MutationKind]
    MUTATION_KIND_REMOVE_VERTEX: _ClassVar[MutationKind]
    MUTATION_KIND_ADD_EDGE: _ClassVar[MutationKind]
    MUTATION_KIND_REMOVE_EDGE: _ClassVar[MutationKind]
    MUTATION_KIND_UPDATE_FEATURES: _ClassVar[MutationKind]

class ApplyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLY_STATE_UNSPECIFIED: _ClassVar[ApplyState]
    APPLY_STATE_APPLIED: _ClassVar[ApplyState]
    APPLY_STATE_PENDING: _ClassVar[ApplyState]
EMBEDDING_FORMAT_UNSPECIFIED: EmbeddingFormat
EMBEDDING_FORMAT_RAW_F32: EmbeddingFormat
EMBEDDING_FORMAT_ARROW_IPC: EmbeddingFormat
MUTATION_KIND_UNSPECIFIED: MutationKind
MUTATION_KIND_ADD_VERTEX: MutationKind
MUTATION_KIND_REMOVE_VERTEX: MutationKind
MUTATION_KIND_ADD_EDGE: MutationKind
MUTATION_KIND_REMOVE_EDGE: MutationKind
MUTATION_KIND_UPDATE_FEATURES: MutationKind
APPLY_STATE_UNSPECIFIED: ApplyState
APPLY_STATE_APPLIED: ApplyState
APPLY_STATE_PENDING: ApplyState

class EmbeddingMatrix(_message.Message):
    __slots__ = ("rows", "dim", "format", "data", "arrow_ipc")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ARROW_IPC_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    format: EmbeddingFormat
    data: bytes
    arrow_ipc: bytes
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., format: _Optional[_Union[EmbeddingFormat, str]] = ..., data: _Optional[bytes] = ..., arrow_ipc: _Optional[bytes] = ...) -> None: ...

class Offsets(_message.Message):
    __slots__ = ("offsets",)
    class OffsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    offsets: _containers.ScalarMap[int, int]
    def __init__(self, offsets: _Optional[_Mapping[int, int]] = ...) -> None: ...

class GetEmbeddingsRequest(_message.Message):
    __slots__ = ("vertex_ids", "layer", "max_staleness_ms", "min_offsets", "format", "input_features", "answer_now")
    VERTEX_IDS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ANSWER_NOW_FIELD_NUMBER: _ClassVar[int]
    vertex_ids: _containers.RepeatedScalarFieldContainer[int]
    layer: int
    max_staleness_ms: float
    min_offsets: Offsets
    format: EmbeddingFormat
    input_features: bool
    answer_now: bool
    def __init__(self, vertex_ids: _Optional[_Iterable[int]] = ..., layer: _Optional[int] = ..., max_staleness_ms: _Optional[float] = ..., min_offsets: _Optional[_Union[Offsets, _Mapping]] = ..., format: _Optional[_Union[EmbeddingFormat, str]] = ..., input_features: _Optional[bool] = ..., answer_now: _Optional[bool] = ...) -> None: ...

class GetEmbeddingsResponse(_message.Message):
    __slots__ = ("vertex_ids", "versions", "embeddings", "staleness_ms", "watermark", "layer", "answered_at_unix_ms", "model_digest", "bound_met")
    class WatermarkEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    VERTEX_IDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MS_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BOUND_MET_FIELD_NUMBER: _ClassVar[int]
    vertex_ids: _containers.RepeatedScalarFieldContainer[int]
    versions: _containers.RepeatedScalarFieldContainer[int]
    embeddings: EmbeddingMatrix
    staleness_ms: float
    watermark: _containers.ScalarMap[int, int]
    layer: int
    answered_at_unix_ms: int
    model_digest: str
    bound_met: bool
    def __init__(self, vertex_ids: _Optional[_Iterable[int]] = ..., versions: _Optional[_Iterable[int]] = ..., embeddings: _Optional[_Union[EmbeddingMatrix, _Mapping]] = ..., staleness_ms: _Optional[float] = ..., watermark: _Optional[_Mapping[int, int]] = ..., layer: _Optional[int] = ..., answered_at_unix_ms: _Optional[int] = ..., model_digest: _Optional[str] = ..., bound_met: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("vertex_ids", "layer", "format", "min_interval_ms")
    VERTEX_IDS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    vertex_ids: _containers.RepeatedScalarFieldContainer[int]
    layer: int
    format: EmbeddingFormat
    min_interval_ms: int
    def __init__(self, vertex_ids: _Optional[_Iterable[int]] = ..., layer: _Optional[int] = ..., format: _Optional[_Union[EmbeddingFormat, str]] = ..., min_interval_ms: _Optional[int] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("initial", "vertex_ids", "versions", "embeddings", "staleness_ms", "watermark", "layer", "answered_at_unix_ms", "model_digest")
    class WatermarkEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    VERTEX_IDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MS_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    initial: bool
    vertex_ids: _containers.RepeatedScalarFieldContainer[int]
    versions: _containers.RepeatedScalarFieldContainer[int]
    embeddings: EmbeddingMatrix
    staleness_ms: float
    watermark: _containers.ScalarMap[int, int]
    layer: int
    answered_at_unix_ms: int
    model_digest: str
    def __init__(self, initial: _Optional[bool] = ..., vertex_ids: _Optional[_Iterable[int]] = ..., versions: _Optional[_Iterable[int]] = ..., embeddings: _Optional[_Union[EmbeddingMatrix, _Mapping]] = ..., staleness_ms: _Optional[float] = ..., watermark: _Optional[_Mapping[int, int]] = ..., layer: _Optional[int] = ..., answered_at_unix_ms: _Optional[int] = ..., model_digest: _Optional[str] = ...) -> None: ...

class Mutation(_message.Message):
    __slots__ = ("kind", "src", "dst", "features")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    kind: MutationKind
    src: int
    dst: int
    features: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, kind: _Optional[_Union[MutationKind, str]] = ..., src: _Optional[int] = ..., dst: _Optional[int] = ..., features: _Optional[_Iterable[float]] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("arrow_ipc", "mutations", "request_id")
    ARROW_IPC_FIELD_NUMBER: _ClassVar[int]
    MUTATIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    arrow_ipc: bytes
    mutations: _containers.RepeatedCompositeFieldContainer[Mutation]
    request_id: str
    def __init__(self, arrow_ipc: _Optional[bytes] = ..., mutations: _Optional[_Iterable[_Union[Mutation, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("offsets", "num_mutations", "state")
    class OffsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    NUM_MUTATIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    offsets: _containers.ScalarMap[int, int]
    num_mutations: int
    state: ApplyState
    def __init__(self, offsets: _Optional[_Mapping[int, int]] = ..., num_mutations: _Optional[int] = ..., state: _Optional[_Union[ApplyState, str]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PartitionStatus(_message.Message):
    __slots__ = ("partition", "alive", "num_vertices", "watermark", "lag", "applied_mutations", "mutations_per_s", "node", "memory_bytes", "rss_bytes")
    class WatermarkEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class MemoryBytesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    NUM_VERTICES_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    APPLIED_MUTATIONS_FIELD_NUMBER: _ClassVar[int]
    MUTATIONS_PER_S_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    partition: int
    alive: bool
    num_vertices: int
    watermark: _containers.ScalarMap[int, int]
    lag: int
    applied_mutations: int
    mutations_per_s: float
    node: str
    memory_bytes: _containers.ScalarMap[str, int]
    rss_bytes: int
    def __init__(self, partition: _Optional[int] = ..., alive: _Optional[bool] = ..., num_vertices: _Optional[int] = ..., watermark: _Optional[_Mapping[int, int]] = ..., lag: _Optional[int] = ..., applied_mutations: _Optional[int] = ..., mutations_per_s: _Optional[float] = ..., node: _Optional[str] = ..., memory_bytes: _Optional[_Mapping[str, int]] = ..., rss_bytes: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("partitions", "watermark", "num_layers", "embedding_dims", "healthy", "extra", "model")
    class WatermarkEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIMS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStatus]
    watermark: _containers.ScalarMap[int, int]
    num_layers: int
    embedding_dims: _containers.RepeatedScalarFieldContainer[int]
    healthy: bool
    extra: _containers.ScalarMap[str, float]
    model: ModelInfo
    def __init__(self, partitions: _Optional[_Iterable[_Union[PartitionStatus, _Mapping]]] = ..., watermark: _Optional[_Mapping[int, int]] = ..., num_layers: _Optional[int] = ..., embedding_dims: _Optional[_Iterable[int]] = ..., healthy: _Optional[bool] = ..., extra: _Optional[_Mapping[str, float]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("layer_types", "dims", "digest")
    LAYER_TYPES_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    layer_types: _containers.RepeatedScalarFieldContainer[str]
    dims: _containers.RepeatedScalarFieldContainer[int]
    digest: str
    def __init__(self, layer_types: _Optional[_Iterable[str]] = ..., dims: _Optional[_Iterable[int]] = ..., digest: _Optional[str] = ...) -> None: ...
