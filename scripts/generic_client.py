#!/usr/bin/env python3
"""A generic gRPC client that knows nothing of syncpay's .proto files.

It discovers the services through server reflection, builds message
classes from the descriptors the server sends, and calls one method of each
of the three services. Usage (needs `pip install grpcio grpcio-reflection
protobuf`):

    python3 scripts/generic_client.py 127.0.0.1:7700 "$(cat syncpay-data/admin.token)"
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def reflect(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    services = [
        s.name
        for r in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        for s in r.list_services_response.service
    ]
    pool = descriptor_pool.DescriptorPool()
    seen = set()
    for name in services:
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
        for response in stub.ServerReflectionInfo(iter([request])):
            protos = [FileDescriptorProto.FromString(b) for b in response.file_descriptor_response.file_descriptor_proto]
            # Add dependencies before dependants.
            pending = [p for p in protos if p.name not in seen]
            while pending:
                progressed = False
                for p in list(pending):
                    if all(d in seen for d in p.dependency):
                        pool.Add(p)
                        seen.add(p.name)
                        pending.remove(p)
                        progressed = True
                if not progressed:
                    raise RuntimeError(f"unresolvable descriptors: {[p.name for p in pending]}")
    return services, pool


def call(channel, pool, method_path, fields, token):
    service_name, method_name = method_path.rsplit("/", 1)
    method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    rpc = channel.unary_unary(
        f"/{method_path}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    return rpc(request_class(**fields), metadata=[("authorization", f"Bearer {token}")])


def main():
    address, admin_token = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(address)
    services, pool = reflect(channel)
    print("services:", ", ".join(sorted(services)))
    shop = call(channel, pool, "syncpay.v1.AdminService/CreateShop",
                {"shop_id": "generic-shop", "display_name": "Generic Shop"}, admin_token)
    print("AdminService/CreateShop ->", shop.shop_id)
    carrier = call(channel, pool, "syncpay.v1.AdminService/CreateCarrier",
                   {"carrier_id": "generic-carrier", "display_name": "Generic Carrier"}, admin_token)
    enrolled = call(channel, pool, "syncpay.v1.CarrierService/EnrollSubscriber",
                    {"subscriber_number": "+819099990000", "funding": 1}, carrier.token)
    print("CarrierService/EnrollSubscriber ->", enrolled.subscriber_number)
    register = call(channel, pool, "syncpay.v1.RegisterService/OpenRegister", {"label": "generic till"}, shop.token)
    print("RegisterService/OpenRegister ->", register.register_id)
    report = call(channel, pool, "syncpay.v1.AdminService/VerifyLedger", {}, admin_token)
    print("AdminService/VerifyLedger -> ok =", report.ok)
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
