"""`ebbtide scaler`: a KEDA external scaler (gRPC) that scales each function's Deployment on its lag.

    targets   what is watched per function and told to KEDA: consumers, bell subjects, metric and target (pure)
    watch     one function's lag (JetStream API, from the consumer's leader) and activity (the bell)
    wire      the protobuf messages of KEDA's externalscaler.proto, encoded by hand (pure)
    service   the gRPC service, /metrics, and the server that runs it all

Never loaded by a function process (it needs grpcio, the `scaler` extra).
"""
