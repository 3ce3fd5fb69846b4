"""The Kafka layer: wire format, producer, partitioned consumer, dead letters, embedded broker.

Modules (imported on use, so the CLI stays fast): ``wire`` (encode/decode one record),
``producer`` (:class:`MutationProducer`), ``consumer`` (:class:`MutationConsumer`,
:class:`PolledBatch`), ``topics`` (creation, dead-letter names), ``replay`` (dataset replay),
``broker`` (the local tansu broker; the only tansu-specific module), ``cli``.  The contract for
producers in other languages is ``docs/wire-format.md``.
"""
