"""The gRPC edge of clustergnn: ``clustergnn.v1`` services over any ``EmbeddingBackend``.

``server`` (GatewayServer; its config is ``clustergnn.config.GatewayConfig``), ``client``
(GatewayClient), ``auth``, ``env`` (environment variables and token files), ``metrics``, ``health``,
``cli``; the wire schema is ``proto/clustergnn/v1/clustergnn.proto`` and its generated code lives in
``_gen`` (regenerate with ``scripts/gen_proto.py``).  See docs/gateway.md.
"""
