"""The messages of the standard gRPC health service (`grpc.health.v1`, health.proto of
grpc/grpc), built in a private descriptor pool.

Two fields in all, so they are declared here rather than taken from grpcio-health-checking
(which would bring grpcio, ~19 MB, into the image for two messages). A private pool, not
protobuf's default one: a process (a test, an app embedding the server) may also load
grpcio-health-checking's copy, and one pool cannot hold the same names twice."""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto

# HealthCheckResponse.ServingStatus
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = range(4)


def _build():
    proto = descriptor_pb2.FileDescriptorProto(name="servedmodel/grpc_health_v1.proto",
                                               package="grpc.health.v1", syntax="proto3")
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=_F.TYPE_ENUM, label=_F.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"grpc.health.v1.{name}")) for name in ("HealthCheckRequest", "HealthCheckResponse"))


HealthCheckRequest, HealthCheckResponse = _build()
