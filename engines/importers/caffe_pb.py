"""Caffe's message classes, built at import time from ``caffe.proto`` without protoc.

The .proto file is the single source of truth. This module reads the small proto2 subset
it uses (messages, nested enums, optional/repeated scalar and message fields, field options)
into a ``FileDescriptorProto`` and lets protobuf's runtime make the classes.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_PATH = Path(__file__).with_name("caffe.proto")

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int64": _F.TYPE_INT64, "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}
_LABELS = {"optional": _F.LABEL_OPTIONAL, "repeated": _F.LABEL_REPEATED, "required": _F.LABEL_REQUIRED}
_TOKEN = re.compile(r'"[^"]*"|[A-Za-z_][\w.]*|-?\d[\w.+-]*|[{}\[\]=;,]')


def _tokens(text: str) -> list[str]:
    text = re.sub(r"//[^\n]*", "", text)
    return _TOKEN.findall(text)


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def next(self) -> str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, value: str) -> None:
        token = self.next()
        if token != value:
            raise ValueError(f"caffe.proto: expected {value!r}, found {token!r}")

    def file(self) -> descriptor_pb2.FileDescriptorProto:
        proto = descriptor_pb2.FileDescriptorProto(name="partcam_caffe.proto", syntax="proto2")
        while self.pos < len(self.tokens):
            token = self.next()
            if token == "syntax":
                self.expect("=")
                self.next()
                self.expect(";")
            elif token == "package":
                proto.package = self.next()
                self.expect(";")
            elif token == "message":
                self.message(proto.message_type.add())
            else:
                raise ValueError(f"caffe.proto: unexpected {token!r}")
        return proto

    def message(self, message: descriptor_pb2.DescriptorProto) -> None:
        message.name = self.next()
        self.expect("{")
        while (token := self.next()) != "}":
            if token == "enum":
                self.enum(message.enum_type.add())
            elif token == "message":
                self.message(message.nested_type.add())
            else:
                self.field(message.field.add(), token)

    def enum(self, enum: descriptor_pb2.EnumDescriptorProto) -> None:
        enum.name = self.next()
        self.expect("{")
        while (token := self.next()) != "}":
            self.expect("=")
            enum.value.add(name=token, number=int(self.next()))
            self.expect(";")

    def field(self, field: descriptor_pb2.FieldDescriptorProto, label: str) -> None:
        field.label = _LABELS[label]
        type_name = self.next()
        field.name = self.next()
        self.expect("=")
        field.number = int(self.next())
        if type_name in _SCALARS:
            field.type = _SCALARS[type_name]
        else:
            field.type_name = type_name  # resolved to a message or enum below
        token = self.next()
        if token == "[":
            while (option := self.next()) != "]":
                if option == ",":
                    continue
                self.expect("=")
                value = self.next()
                if option == "packed":
                    field.options.packed = value == "true"
                # Defaults only matter when writing; the importer reads presence explicitly.
            token = self.next()
        if token != ";":
            raise ValueError(f"caffe.proto: expected ';' after field {field.name}, found {token!r}")


def _resolve_types(proto: descriptor_pb2.FileDescriptorProto) -> None:
    """Turn bare type names into fully qualified message or enum references."""
    messages: set[str] = set()
    enums: set[str] = set()

    def collect(message: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{message.name}"
        messages.add(name)
        enums.update(f"{name}.{enum.name}" for enum in message.enum_type)
        for nested in message.nested_type:
            collect(nested, name)

    def resolve(message: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{message.name}"
        for field in message.field:
            if not field.type_name:
                continue
            # Search outward from the message's own scope, as protoc does.
            parts = name.split(".")
            for depth in range(len(parts), 0, -1):
                candidate = ".".join(parts[:depth]) + "." + field.type_name
                if candidate in messages or candidate in enums:
                    field.type_name = candidate
                    field.type = _F.TYPE_MESSAGE if candidate in messages else _F.TYPE_ENUM
                    break
            else:
                raise ValueError(f"caffe.proto: unknown type {field.type_name!r} in {name}")
        for nested in message.nested_type:
            resolve(nested, name)

    scope = "." + proto.package if proto.package else ""
    for message in proto.message_type:
        collect(message, scope)
    for message in proto.message_type:
        resolve(message, scope)


def load_messages(path: Path = PROTO_PATH) -> dict[str, type]:
    """Parse ``caffe.proto`` and return its top-level message classes by name."""
    proto = _Parser(_tokens(path.read_text())).file()
    _resolve_types(proto)
    pool = descriptor_pool.DescriptorPool()
    file_descriptor = pool.Add(proto)
    del file_descriptor
    return {
        message.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{proto.package}.{message.name}"))
        for message in proto.message_type
    }


_MESSAGES = load_messages()
NetParameter = _MESSAGES["NetParameter"]
LayerParameter = _MESSAGES["LayerParameter"]
V1LayerParameter = _MESSAGES["V1LayerParameter"]
BlobProto = _MESSAGES["BlobProto"]
BlobShape = _MESSAGES["BlobShape"]
