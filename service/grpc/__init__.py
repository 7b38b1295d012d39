"""The Open Inference Protocol over gRPC (KServe's `inference.GRPCInferenceService`), in the HTTP process.

`grpc_predict_v2.proto` is the protocol; `grpc_predict_v2_pb2*.py` are generated from it by
`scripts/gen_grpc.sh` and committed; `server.py` is the adapter. Nothing here is imported unless
`VAE_GRPC_PORT` is set (it is 8081 by default; 0 turns gRPC off).
"""
