"""The shared black-box FM as a gRPC service (``baps-fed fm serve``) and its client (``grpc://``).

protos.py    build + import the code generated from baps_fed_fm.proto (never committed)
codec.py     numpy <-> messages, checked byte by byte
tokens.py    the tokens file: who may call, with which quota and rate limit
ledger.py    per-client metering, quota and rate enforcement, the metering file
batcher.py   dynamic micro-batching of concurrent requests into one FM call
errors.py    the client's exceptions and the metadata that selects them
server.py    the servicer, FMServer (start/stop) and ``serve`` (signals, graceful drain)
client.py    GrpcFM, the BlackboxFM behind ``grpc://HOST:PORT?...`` specs

Modules are imported directly (``from baps_fed.fm.service.client import GrpcFM``) so that using
the FM layer without the service never needs grpc.
"""
