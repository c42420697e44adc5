"""Reading an ONNX model file without the onnx package: its graph's nodes, weights, inputs and
outputs, from the protobuf encoding onnx.ai specifies (`onnx/onnx.proto`, whose field numbers
are quoted below). Only what running the graph needs is read; nothing in the file is executed.

Why not the onnx package: it would pin a protobuf version beside ComfyUI's other custom nodes,
and all we need is the protobuf wire format (developers.google.com/protocol-buffers/docs/encoding):
a message is a sequence of fields, each a varint key (field number << 3 | wire type) followed by
a varint, 8 bytes, 4 bytes, or a varint length and that many bytes (strings, packed numbers and
nested messages).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from .weights import BadWeightsError

# Protobuf wire types.
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
VARINT_PAYLOAD_BITS = 7
INT64_RANGE = 1 << 64

# onnx.proto field numbers of the messages read.
MODEL_OPSET_IMPORT, MODEL_GRAPH = 8, 7
OPSET_DOMAIN, OPSET_VERSION = 1, 2
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 5, 11, 12
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTRIBUTE_NAME, ATTRIBUTE_FLOAT, ATTRIBUTE_INT, ATTRIBUTE_STRING, ATTRIBUTE_TENSOR = 1, 2, 3, 4, 5
ATTRIBUTE_FLOATS, ATTRIBUTE_INTS, ATTRIBUTE_STRINGS, ATTRIBUTE_TYPE = 7, 8, 9, 20
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_FLOAT_DATA, TENSOR_INT32_DATA, TENSOR_INT64_DATA = 1, 2, 4, 5, 7
TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_DOUBLE_DATA, TENSOR_DATA_LOCATION = 8, 9, 10, 14
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR = 1
TENSOR_TYPE_ELEMENT, TENSOR_TYPE_SHAPE = 1, 2
SHAPE_DIMENSION = 1
DIMENSION_VALUE, DIMENSION_PARAM = 1, 2

# AttributeProto.AttributeType values: which field holds the value.
ATTRIBUTE_FIELD_OF_TYPE = {1: ATTRIBUTE_FLOAT, 2: ATTRIBUTE_INT, 3: ATTRIBUTE_STRING, 4: ATTRIBUTE_TENSOR,
                           6: ATTRIBUTE_FLOATS, 7: ATTRIBUTE_INTS, 8: ATTRIBUTE_STRINGS}
# TensorProto.DataType -> (numpy type of its little-endian bytes, torch type).
ELEMENT_TYPES = {
    1: (np.float32, torch.float32), 2: (np.uint8, torch.uint8), 3: (np.int8, torch.int8),
    5: (np.int16, torch.int16), 6: (np.int32, torch.int32), 7: (np.int64, torch.int64),
    9: (np.bool_, torch.bool), 10: (np.float16, torch.float16), 11: (np.float64, torch.float64),
}
EXTERNAL_DATA = 1  # TensorProto.DataLocation.EXTERNAL: the bytes are in another file
DEFAULT_DOMAIN = ("", "ai.onnx")  # the standard operators; others are a runtime's own


@dataclass
class Node:
    """One operator call: `op_type` applied to the named `inputs` ("" = an optional input left
    out), giving the named `outputs`."""
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, Any]
    name: str = ""
    domain: str = ""


@dataclass
class ValueInfo:
    """A graph input or output: its name and shape (a number per fixed dimension, a name or None
    for a dimension left free, such as a batch)."""
    name: str
    shape: tuple[int | str | None, ...] = ()


@dataclass
class OnnxModel:
    nodes: list[Node]
    initializers: dict[str, torch.Tensor]
    inputs: list[ValueInfo]  # the graph's inputs that are not weights
    outputs: list[ValueInfo]
    opset: int  # the standard domain's operator set version
    other_domains: dict[str, int] = field(default_factory=dict)


class OnnxFormatError(ValueError):
    """The bytes do not parse as the messages expected."""


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise OnnxFormatError("a number runs past the end of its message")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += VARINT_PAYLOAD_BITS


def _signed(value: int) -> int:
    """A varint read as int64 (negative numbers are ten-byte two's complement)."""
    return value - INT64_RANGE if value >= INT64_RANGE // 2 else value


def fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field of a message: an int for a varint, the
    bytes (a memoryview) otherwise."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, position = _varint(data, position)
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            value, position = data[position:position + size], position + size
        elif wire_type == LENGTH_DELIMITED:
            size, position = _varint(data, position)
            value, position = data[position:position + size], position + size
        else:
            raise OnnxFormatError(f"unknown protobuf wire type {wire_type}")
        if position > len(data):
            raise OnnxFormatError("a field runs past the end of its message")
        yield number, wire_type, value


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8")


def _repeated_ints(values: list, wire_type: int, value: Any) -> None:
    """Append a repeated int64 field's entries: one varint, or a packed run of them."""
    if wire_type == VARINT:
        values.append(_signed(value))
        return
    position = 0
    while position < len(value):
        number, position = _varint(value, position)
        values.append(_signed(number))


def _repeated_fixed(values: list, value: memoryview, number_type: type) -> None:
    """Append a repeated float/double field's entries (one, or a packed run)."""
    values.extend(np.frombuffer(bytes(value), dtype=np.dtype(number_type).newbyteorder("<")).tolist())


def read_tensor(data: memoryview) -> tuple[str, torch.Tensor]:
    """A TensorProto as (name, tensor)."""
    name, dims, element_type, raw, location = "", [], 1, None, 0
    ints, floats = [], []
    for number, wire_type, value in fields(data):
        if number == TENSOR_DIMS:
            _repeated_ints(dims, wire_type, value)
        elif number == TENSOR_DATA_TYPE:
            element_type = value
        elif number == TENSOR_NAME:
            name = _text(value)
        elif number == TENSOR_RAW_DATA:
            raw = bytes(value)
        elif number in (TENSOR_INT32_DATA, TENSOR_INT64_DATA):
            _repeated_ints(ints, wire_type, value)
        elif number == TENSOR_FLOAT_DATA:
            _repeated_fixed(floats, value, np.float32)
        elif number == TENSOR_DOUBLE_DATA:
            _repeated_fixed(floats, value, np.float64)
        elif number == TENSOR_DATA_LOCATION:
            location = value
    if location == EXTERNAL_DATA:
        raise OnnxFormatError(f"tensor '{name}' keeps its data in a separate file, which is not read")
    if element_type not in ELEMENT_TYPES:
        raise OnnxFormatError(f"tensor '{name}' has element type {element_type}, which is not read")
    numpy_type, _ = ELEMENT_TYPES[element_type]
    if raw is not None:
        array = np.frombuffer(raw, dtype=np.dtype(numpy_type).newbyteorder("<"))
    elif numpy_type == np.float16:  # int32_data holds the half floats' bit patterns
        array = np.array(ints, dtype=np.uint16).view(np.float16)
    else:
        array = np.array(floats if floats else ints, dtype=numpy_type)
    expected = int(np.prod(dims)) if dims else 1
    if array.size != expected:
        raise OnnxFormatError(f"tensor '{name}' holds {array.size} values for shape {tuple(dims)}")
    return name, torch.from_numpy(array.astype(numpy_type).reshape(dims).copy())


def read_attribute(data: memoryview) -> tuple[str, Any]:
    """An AttributeProto as (name, value): a float, int, str, tensor, or a list of those."""
    name, attribute_type, present = "", None, {}
    for number, wire_type, value in fields(data):
        if number == ATTRIBUTE_NAME:
            name = _text(value)
        elif number == ATTRIBUTE_TYPE:
            attribute_type = value
        elif number == ATTRIBUTE_FLOAT:
            present[number] = float(np.frombuffer(bytes(value), "<f4")[0])
        elif number == ATTRIBUTE_INT:
            present[number] = _signed(value)
        elif number == ATTRIBUTE_STRING:
            present[number] = _text(value)
        elif number == ATTRIBUTE_TENSOR:
            present[number] = read_tensor(value)[1]
        elif number == ATTRIBUTE_FLOATS:
            _repeated_fixed(present.setdefault(number, []), value, np.float32)
        elif number == ATTRIBUTE_INTS:
            _repeated_ints(present.setdefault(number, []), wire_type, value)
        elif number == ATTRIBUTE_STRINGS:
            present.setdefault(number, []).append(_text(value))
    held = ATTRIBUTE_FIELD_OF_TYPE.get(attribute_type)
    if held is None:  # no type (files before IR version 2) or a type not read: the field present
        held = next(iter(present), None)
    # A repeated attribute with no entries has no field at all.
    return name, present.get(held, [] if held in (ATTRIBUTE_FLOATS, ATTRIBUTE_INTS, ATTRIBUTE_STRINGS) else None)


def read_node(data: memoryview) -> Node:
    node = Node(op_type="", inputs=[], outputs=[], attributes={})
    for number, _, value in fields(data):
        if number == NODE_INPUT:
            node.inputs.append(_text(value))
        elif number == NODE_OUTPUT:
            node.outputs.append(_text(value))
        elif number == NODE_NAME:
            node.name = _text(value)
        elif number == NODE_OP_TYPE:
            node.op_type = _text(value)
        elif number == NODE_DOMAIN:
            node.domain = _text(value)
        elif number == NODE_ATTRIBUTE:
            attribute_name, attribute_value = read_attribute(value)
            node.attributes[attribute_name] = attribute_value
    return node


def _shape(type_data: memoryview) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for number, _, tensor_type in fields(type_data):
        if number != TYPE_TENSOR:
            continue
        for tensor_field, _, shape in fields(tensor_type):
            if tensor_field != TENSOR_TYPE_SHAPE:
                continue
            for shape_field, _, dimension in fields(shape):
                if shape_field != SHAPE_DIMENSION:
                    continue
                size: int | str | None = None
                for dimension_field, _, value in fields(dimension):
                    if dimension_field == DIMENSION_VALUE:
                        size = _signed(value)
                    elif dimension_field == DIMENSION_PARAM:
                        size = _text(value)
                dims.append(size)
    return tuple(dims)


def read_value_info(data: memoryview) -> ValueInfo:
    info = ValueInfo(name="")
    for number, _, value in fields(data):
        if number == VALUE_NAME:
            info.name = _text(value)
        elif number == VALUE_TYPE:
            info.shape = _shape(value)
    return info


def parse_model(data: bytes | memoryview) -> OnnxModel:
    """A ModelProto's main graph."""
    graph, opsets = None, {}
    for number, _, value in fields(memoryview(data)):
        if number == MODEL_GRAPH:
            graph = value
        elif number == MODEL_OPSET_IMPORT:
            opset = dict((field_number, field_value) for field_number, _, field_value in fields(value))
            opsets[_text(opset.get(OPSET_DOMAIN, memoryview(b"")))] = opset.get(OPSET_VERSION, 0)
    if graph is None:
        raise OnnxFormatError("the file holds no graph")
    nodes, initializers, inputs, outputs = [], {}, [], []
    for number, _, value in fields(graph):
        if number == GRAPH_NODE:
            nodes.append(read_node(value))
        elif number == GRAPH_INITIALIZER:
            name, tensor = read_tensor(value)
            initializers[name] = tensor
        elif number == GRAPH_INPUT:
            inputs.append(read_value_info(value))
        elif number == GRAPH_OUTPUT:
            outputs.append(read_value_info(value))
    standard = max((version for domain, version in opsets.items() if domain in DEFAULT_DOMAIN), default=0)
    return OnnxModel(nodes=nodes, initializers=initializers,
                     inputs=[info for info in inputs if info.name not in initializers], outputs=outputs,
                     opset=standard, other_domains={d: v for d, v in opsets.items() if d not in DEFAULT_DOMAIN})


def load_onnx(path: str) -> OnnxModel:
    """The model in an .onnx file; a BadWeightsError naming the file when it does not parse."""
    name = os.path.basename(path)
    with open(path, "rb") as file:
        data = file.read()
    try:
        model = parse_model(data)
    except (OnnxFormatError, UnicodeDecodeError, ValueError) as error:
        raise BadWeightsError(f"'{name}' is not a readable ONNX file ({error}): download the file published "
                              "under this name again") from error
    if not model.nodes or not model.outputs:
        raise BadWeightsError(f"'{name}' holds no ONNX graph: download the file published under this name again")
    return model
