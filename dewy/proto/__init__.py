"""The gRPC registry protocol: ``dewy.proto`` and the Python modules generated from it.

``dewy.proto`` is the wire contract with registry servers (docs/grpc.md).
``dewy_pb2`` (messages) and ``dewy_pb2_grpc`` (stub and servicer) are generated;
do not edit them. After changing the .proto, regenerate from the repository root
with grpcio-tools (a test dependency)::

    .venv/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. dewy/proto/dewy.proto

The generated code requires protobuf and grpcio at least as new as the
grpcio-tools that generated it (see the version checks at the top of each
module). ``tests/test_grpc.py`` checks that the generated descriptor matches the
.proto. Importing this package imports nothing: only ``dewy.registry.grpc``
(used for grpc:// URLs) loads grpc and protobuf.
"""
