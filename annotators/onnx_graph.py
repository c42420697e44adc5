"""Running an ONNX graph (`onnx_file.OnnxModel`) with torch operations: the published DWPose
networks as ONNX files (yzd-v/DWPose's `yolox_l.onnx` and `dw-ll_ucoco_384.onnx`) run on
ComfyUI's device without onnxruntime.

`OnnxGraph` is a torch module: the graph's weights are its buffers, so ComfyUI's model management
moves and casts it like any network, and `forward` calls each node's operator in the file's
order (ONNX requires nodes to be listed after what they read). Each operator is a small function
`operator(attributes, inputs, context)` following its definition at onnx.ai/onnx/operators; the
set is what exported convolutional and attention networks use. An operator outside it is refused
when the file is loaded, by name, never run wrong.

Integers stay integers (shapes, indices); floating values run in the module's floating dtype, so
a `Cast` to float follows a half-precision module instead of mixing precisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .onnx_file import DEFAULT_DOMAIN, ELEMENT_TYPES, Node, OnnxModel

Tensor = torch.Tensor


class UnsupportedOnnxOperator(ValueError):
    """The graph uses an operator, or an operator setting, that is not implemented here."""


@dataclass
class Context:
    float_dtype: torch.dtype  # the module's floating dtype
    opset: int
    outputs: int = 1  # how many outputs the node names (Split's equal parts)


Operator = Callable[[dict[str, Any], list[Tensor | None], Context], Any]


def _ints(values: Tensor | Sequence[int]) -> list[int]:
    return [int(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _optional(inputs: list[Tensor | None], index: int) -> Tensor | None:
    return inputs[index] if index < len(inputs) else None


def _attribute_or_input(attributes: dict[str, Any], name: str, inputs: list[Tensor | None], index: int):
    """Settings that moved from attributes to inputs between operator set versions."""
    if name in attributes:
        return attributes[name]
    value = _optional(inputs, index)
    return None if value is None else value.tolist()


# --- element-wise ------------------------------------------------------------------------------

def _unary(function: Callable[[Tensor], Tensor]) -> Operator:
    return lambda attributes, inputs, context: function(inputs[0])


def _divide(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


def _binary(function: Callable[[Tensor, Tensor], Tensor]) -> Operator:
    return lambda attributes, inputs, context: function(inputs[0], inputs[1])


def _variadic(function: Callable[[Tensor, Tensor], Tensor]) -> Operator:
    def apply(attributes, inputs, context):
        result = inputs[0]
        for other in inputs[1:]:
            result = function(result, other)
        return result
    return apply


def hard_sigmoid(attributes, inputs, context):
    return (attributes.get("alpha", 0.2) * inputs[0] + attributes.get("beta", 0.5)).clamp(0, 1)


def leaky_relu(attributes, inputs, context):
    return F.leaky_relu(inputs[0], attributes.get("alpha", 0.01))


def clip(attributes, inputs, context):
    low = attributes.get("min", _optional(inputs, 1))
    high = attributes.get("max", _optional(inputs, 2))
    x = inputs[0]
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype, device=x.device))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype, device=x.device))
    return x


def softmax(attributes, inputs, context):
    x = inputs[0]
    if context.opset >= 13:
        return torch.softmax(x, _axis(attributes.get("axis", -1), x.dim()))
    # Before opset 13: the input as a 2-D matrix split at `axis`, softmax along its rows.
    axis = _axis(attributes.get("axis", 1), x.dim())
    return torch.softmax(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


def where(attributes, inputs, context):
    return torch.where(inputs[0], inputs[1], inputs[2])


# --- linear algebra and convolution ---------------------------------------------------------------

def gemm(attributes, inputs, context):
    a, b, c = inputs[0], inputs[1], _optional(inputs, 2)
    a = a.t() if attributes.get("transA", 0) else a
    b = b.t() if attributes.get("transB", 0) else b
    result = attributes.get("alpha", 1.0) * (a @ b)
    return result if c is None else result + attributes.get("beta", 1.0) * c


def _spatial_padding(attributes: dict[str, Any], spatial: int) -> tuple[list[int], list[int]]:
    """ONNX `pads` (all begins, then all ends) as (begins, ends) per spatial axis."""
    if attributes.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise UnsupportedOnnxOperator(f"auto_pad={attributes['auto_pad']} is not supported")
    pads = attributes.get("pads", [0] * 2 * spatial)
    return pads[:spatial], pads[spatial:]


def _padded(x: Tensor, begins: list[int], ends: list[int], value: float = 0.0) -> Tensor:
    """`x` padded on its trailing spatial axes (F.pad takes the last axis first)."""
    pairs = [amount for begin, end in reversed(list(zip(begins, ends))) for amount in (begin, end)]
    return F.pad(x, pairs, value=value) if any(pairs) else x


CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
# Devices whose 2-D convolutions are faster on channels-last maps. CPU (oneDNN), DWPose's two graphs
# on 2 threads (bench/dwpose_onnx.py): detector 1.01 s -> 0.95 s, pose (5 crops) 0.78 s -> 0.71 s.
# Not measured on a GPU, so GPUs keep the layout they are given.
CHANNELS_LAST_DEVICES = ("cpu",)


def conv(attributes, inputs, context):
    x, weight, bias = inputs[0], inputs[1], _optional(inputs, 2)
    spatial = weight.dim() - 2
    if spatial == 2 and x.device.type in CHANNELS_LAST_DEVICES:
        x = x.contiguous(memory_format=torch.channels_last)
    begins, ends = _spatial_padding(attributes, spatial)
    padding: Any = begins
    if begins != ends:  # asymmetric: pad first
        x, padding = _padded(x, begins, ends), 0
    return CONVOLUTIONS[spatial](x, weight, bias, stride=attributes.get("strides", 1), padding=padding,
                                 dilation=attributes.get("dilations", 1), groups=attributes.get("group", 1))


def batch_normalization(attributes, inputs, context):
    x, scale, bias, mean, variance = inputs[:5]
    return F.batch_norm(x, mean, variance, scale, bias, training=False, eps=attributes.get("epsilon", 1e-5))


def layer_normalization(attributes, inputs, context):
    x, scale, bias = inputs[0], inputs[1], _optional(inputs, 2)
    axis = _axis(attributes.get("axis", -1), x.dim())
    return F.layer_norm(x, x.shape[axis:], scale, bias, attributes.get("epsilon", 1e-5))


POOLS = {1: (F.max_pool1d, F.avg_pool1d), 2: (F.max_pool2d, F.avg_pool2d), 3: (F.max_pool3d, F.avg_pool3d)}


def _pool(maximum: bool) -> Operator:
    def apply(attributes, inputs, context):
        x = inputs[0]
        kernel = attributes["kernel_shape"]
        begins, ends = _spatial_padding(attributes, len(kernel))
        padding: Any = begins
        if begins != ends:
            if not maximum:
                raise UnsupportedOnnxOperator("AveragePool with uneven padding is not supported")
            x, padding = _padded(x, begins, ends, value=-math.inf), 0
        strides = attributes.get("strides", [1] * len(kernel))
        ceil_mode = bool(attributes.get("ceil_mode", 0))
        max_pool, average_pool = POOLS[len(kernel)]
        if maximum:
            return max_pool(x, kernel, strides, padding, dilation=attributes.get("dilations", 1), ceil_mode=ceil_mode)
        return average_pool(x, kernel, strides, padding, ceil_mode=ceil_mode,
                            count_include_pad=bool(attributes.get("count_include_pad", 0)))
    return apply


def global_average_pool(attributes, inputs, context):
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def global_max_pool(attributes, inputs, context):
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --- reductions ------------------------------------------------------------------------------------

def _reduce(function: Callable[[Tensor, tuple[int, ...], bool], Tensor], axes_input_from: int) -> Operator:
    """A Reduce* operator; its axes are an attribute before opset `axes_input_from`, an input after."""
    def apply(attributes, inputs, context):
        x = inputs[0]
        axes = attributes.get("axes") if context.opset < axes_input_from else _optional(inputs, 1)
        axes = _ints(axes) if axes is not None else []
        if not axes:
            if attributes.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return function(x, tuple(_axis(a, x.dim()) for a in axes), bool(attributes.get("keepdims", 1)))
    return apply


REDUCE_AXES_INPUT_SUM, REDUCE_AXES_INPUT_OTHERS = 13, 18  # ReduceSum moved its axes to an input first


# --- shapes and indexing -------------------------------------------------------------------------

def reshape(attributes, inputs, context):
    x, shape = inputs[0], _ints(inputs[1])
    if not attributes.get("allowzero", 0):  # 0 keeps the input's size on that axis
        shape = [x.shape[i] if size == 0 else size for i, size in enumerate(shape)]
    return x.reshape(shape)


def flatten(attributes, inputs, context):
    x = inputs[0]
    axis = _axis(attributes.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), -1)


def transpose(attributes, inputs, context):
    x = inputs[0]
    return x.permute(attributes.get("perm", list(reversed(range(x.dim())))))


def squeeze(attributes, inputs, context):
    x = inputs[0]
    axes = _attribute_or_input(attributes, "axes", inputs, 1)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(_axis(a, x.dim()) for a in axes))


def unsqueeze(attributes, inputs, context):
    x = inputs[0]
    axes = _attribute_or_input(attributes, "axes", inputs, 1)
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


def concat(attributes, inputs, context):
    return torch.cat([x for x in inputs if x is not None], _axis(attributes["axis"], inputs[0].dim()))


def split(attributes, inputs, context):
    x = inputs[0]
    axis = _axis(attributes.get("axis", 0), x.dim())
    sizes = _attribute_or_input(attributes, "split", inputs, 1)
    if sizes is None:
        parts = attributes.get("num_outputs", context.outputs)
        size = -(-x.shape[axis] // parts)  # equal parts, the last one smaller (opset 18)
        sizes = [min(size, x.shape[axis] - size * i) for i in range(parts)]
    return tuple(torch.split(x, list(sizes), axis))


def slice_(attributes, inputs, context):
    x = inputs[0]
    if context.opset < 10:
        starts, ends, axes, steps = attributes["starts"], attributes["ends"], attributes.get("axes"), None
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if _optional(inputs, 3) is not None else None
        steps = _ints(inputs[4]) if _optional(inputs, 4) is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step <= 0:
            raise UnsupportedOnnxOperator(f"Slice with step {step} is not supported")
        index[_axis(axis, x.dim())] = slice(start, end, step)  # Python clamps as ONNX does
    return x[tuple(index)]


def gather(attributes, inputs, context):
    x, indices = inputs
    axis = _axis(attributes.get("axis", 0), x.dim())
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)  # negative counts from the end
    flat = x.index_select(axis, indices.reshape(-1))
    return flat.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def shape(attributes, inputs, context):
    dims = inputs[0].shape
    dims = dims[attributes.get("start", 0):attributes.get("end", len(dims))]
    return torch.tensor(list(dims), dtype=torch.int64, device=inputs[0].device)


def expand(attributes, inputs, context):
    x = inputs[0]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(inputs[1]))))


def tile(attributes, inputs, context):
    return inputs[0].repeat(_ints(inputs[1]))


def _float_or_kept(dtype: torch.dtype, context: Context) -> torch.dtype:
    return context.float_dtype if dtype.is_floating_point else dtype


def cast(attributes, inputs, context):
    return inputs[0].to(_float_or_kept(ELEMENT_TYPES[attributes["to"]][1], context))


def constant_of_shape(attributes, inputs, context):
    value = attributes.get("value", torch.zeros(1))
    return torch.full(_ints(inputs[0]), value.item(), dtype=_float_or_kept(value.dtype, context),
                      device=inputs[0].device)


def range_(attributes, inputs, context):
    start, limit, delta = inputs
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}  # ONNX -> torch
TORCH_EDGE_PAD_AXES = 3  # torch pads at most the last three axes in its reflect and replicate modes


def pad(attributes, inputs, context):
    x = inputs[0]
    rank = x.dim()
    if context.opset < 11:
        pads, value = attributes["pads"], attributes.get("value", 0.0)
    else:
        pads = _ints(inputs[1])
        constant = _optional(inputs, 2)
        value = constant.item() if constant is not None and constant.numel() else 0.0
        if _optional(inputs, 3) is not None:  # Pad-18: the pads of these axes only
            axes = [_axis(a, rank) for a in _ints(inputs[3])]
            full = [0] * (2 * rank)
            for i, axis in enumerate(axes):
                full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
            pads = full
    mode = attributes.get("mode", "constant")
    if mode not in PAD_MODES:
        raise UnsupportedOnnxOperator(f"Pad mode={mode} is not supported")
    first = next((axis for axis in range(rank) if pads[axis] or pads[axis + rank]), rank)
    pairs = [amount for axis in reversed(range(first, rank)) for amount in (pads[axis], pads[axis + rank])]
    if mode == "constant":
        return F.pad(x, pairs, value=value)
    if rank - first > TORCH_EDGE_PAD_AXES:
        raise UnsupportedOnnxOperator(f"Pad mode={mode} on more than the last {TORCH_EDGE_PAD_AXES} axes is not supported")
    # torch wants one leading axis before the padded ones: the unpadded ones folded into it.
    padded = F.pad(x.reshape((-1,) + tuple(x.shape[first:])), pairs, mode=PAD_MODES[mode])
    return padded.reshape(tuple(x.shape[:first]) + tuple(padded.shape[1:]))


# --- resampling --------------------------------------------------------------------------------------

# Resize settings whose defaults are all that is implemented (opset 18 added them).
RESIZE_DEFAULTS = {"antialias": 0, "keep_aspect_ratio_policy": "stretch", "axes": None}
LINEAR_MODES = {3: "linear", 4: "bilinear", 5: "trilinear"}  # by input rank


def resize(attributes, inputs, context):
    """Resize (and opset 7-9's Upsample) in the cases torch's interpolate computes exactly:
    nearest with asymmetric coordinates and floor rounding (torch's "nearest"), and linear with
    half-pixel or align-corners coordinates; by the scales given (not the output's ratio) or to
    the sizes given, as ONNX maps coordinates."""
    x = inputs[0]
    if context.opset < 11:  # Upsample / Resize-10: scales (an attribute in Upsample-7), nearest is asymmetric + floor
        scales = [float(s) for s in attributes["scales"]] if "scales" in attributes else _floats(inputs[1])
        sizes = None
        mode, coordinates, rounding = attributes.get("mode", "nearest"), "asymmetric", "floor"
    else:
        for name, default in RESIZE_DEFAULTS.items():
            if attributes.get(name, default) != default:
                raise UnsupportedOnnxOperator(f"Resize with {name}={attributes[name]} is not supported")
        scales = _optional(inputs, 2)
        scales = _floats(scales) if scales is not None and scales.numel() else None
        sizes = _optional(inputs, 3)
        sizes = _ints(sizes) if sizes is not None and sizes.numel() else None
        mode = attributes.get("mode", "nearest")
        coordinates = attributes.get("coordinate_transformation_mode", "half_pixel")
        rounding = attributes.get("nearest_mode", "round_prefer_floor")
    if (sizes is None and scales[:2] != [1, 1]) or (sizes is not None and sizes[:2] != list(x.shape[:2])):
        raise UnsupportedOnnxOperator("Resize of the batch or channel axis is not supported")
    output_size = sizes[2:] if sizes is not None else [math.floor(d * s) for d, s in zip(x.shape[2:], scales[2:])]
    if mode == "nearest" and coordinates == "asymmetric" and rounding == "floor":
        torch_mode, align_corners = "nearest", None
    elif mode == "linear" and coordinates in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        if coordinates == "pytorch_half_pixel" and 1 in output_size:  # ONNX samples 0 there, not the centre
            raise UnsupportedOnnxOperator("Resize with pytorch_half_pixel coordinates to a length of 1 is not supported")
        torch_mode, align_corners = LINEAR_MODES[x.dim()], coordinates == "align_corners"
    else:
        raise UnsupportedOnnxOperator(f"Resize mode={mode}, coordinate_transformation_mode={coordinates}, "
                                      f"nearest_mode={rounding} is not supported")
    if sizes is not None:
        return F.interpolate(x, size=output_size, mode=torch_mode, align_corners=align_corners)
    return F.interpolate(x, scale_factor=scales[2:], mode=torch_mode, align_corners=align_corners,
                         recompute_scale_factor=False)


def _floats(values: Tensor) -> list[float]:
    return [float(v) for v in values.tolist()]


OPERATORS: dict[str, Operator] = {
    # element-wise
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_divide),
    "Pow": _binary(lambda a, b: torch.pow(a, b).to(a.dtype)), "Equal": _binary(torch.eq), "Greater": _binary(torch.gt), "Less": _binary(torch.lt),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
    "Where": where, "Not": _unary(torch.logical_not),
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal), "Erf": _unary(torch.erf),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Identity": _unary(lambda x: x),
    "HardSigmoid": hard_sigmoid, "HardSwish": _unary(F.hardswish), "LeakyRelu": leaky_relu, "Clip": clip,
    "Softmax": softmax,
    # linear algebra, convolution, normalisation, pooling
    "MatMul": _binary(torch.matmul), "Gemm": gemm, "Conv": conv, "BatchNormalization": batch_normalization,
    "LayerNormalization": layer_normalization, "MaxPool": _pool(maximum=True), "AveragePool": _pool(maximum=False),
    "GlobalAveragePool": global_average_pool, "GlobalMaxPool": global_max_pool,
    # reductions
    "ReduceSum": _reduce(lambda x, axes, keep: x.sum(axes, keepdim=keep), REDUCE_AXES_INPUT_SUM),
    "ReduceMean": _reduce(lambda x, axes, keep: x.mean(axes, keepdim=keep), REDUCE_AXES_INPUT_OTHERS),
    "ReduceMax": _reduce(lambda x, axes, keep: x.amax(axes, keepdim=keep), REDUCE_AXES_INPUT_OTHERS),
    "ReduceMin": _reduce(lambda x, axes, keep: x.amin(axes, keepdim=keep), REDUCE_AXES_INPUT_OTHERS),
    "ReduceL2": _reduce(lambda x, axes, keep: x.square().sum(axes, keepdim=keep).sqrt(), REDUCE_AXES_INPUT_OTHERS),
    # shapes and indexing
    "Reshape": reshape, "Flatten": flatten, "Transpose": transpose, "Squeeze": squeeze, "Unsqueeze": unsqueeze,
    "Concat": concat, "Split": split, "Slice": slice_, "Gather": gather, "Shape": shape, "Expand": expand,
    "Tile": tile, "Cast": cast, "ConstantOfShape": constant_of_shape, "Range": range_, "Pad": pad,
    # resampling
    "Resize": resize, "Upsample": resize,
}


def constant_value(attributes: dict[str, Any]) -> Tensor:
    """A Constant node's value, from whichever attribute holds it."""
    if "value" in attributes:
        return attributes["value"]
    for name, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                        ("value_int", torch.int64), ("value_ints", torch.int64)):
        if name in attributes:
            return torch.tensor(attributes[name], dtype=dtype)
    raise UnsupportedOnnxOperator(f"Constant with {sorted(attributes)} is not supported")


def intermediates_released(nodes: Sequence[Node], kept: set[str]) -> list[list[str]]:
    """Per node, the values computed in the graph that no later node reads (dropped once it has
    run, so memory holds what is still needed rather than every activation), other than `kept`."""
    last_reader: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in (*node.inputs, *node.outputs):  # an output nobody reads goes right after its node
            if name and name not in kept:
                last_reader[name] = index
    released: list[list[str]] = [[] for _ in nodes]
    for name, index in last_reader.items():
        released[index].append(name)
    return released


class OnnxGraph(nn.Module):
    """An ONNX graph as a torch module: forward(*inputs) -> tuple of the graph's outputs."""

    def __init__(self, model: OnnxModel, source: str = ""):
        """`source` (the file's name) prefixes the refusal of a setting found only when run."""
        super().__init__()
        self.source = source
        unsupported = sorted({node.op_type if node.domain in DEFAULT_DOMAIN else f"{node.domain}.{node.op_type}"
                              for node in model.nodes
                              if (node.op_type not in OPERATORS and node.op_type != "Constant")
                              or node.domain not in DEFAULT_DOMAIN})
        if unsupported:
            raise UnsupportedOnnxOperator(f"the graph uses ONNX operators not implemented here: {', '.join(unsupported)}")
        self.opset = model.opset
        self.input_names = [info.name for info in model.inputs]
        self.output_names = [info.name for info in model.outputs]
        self.input_shapes = [info.shape for info in model.inputs]
        # Floating weights are parameters and the rest (integer weights, Constant nodes' values)
        # buffers, so all move and cast with the module and its first parameter gives its device
        # and dtype, as our other networks'. Module attribute names cannot hold ONNX names' dots,
        # so each value gets an index.
        self.value_attributes: dict[str, str] = {}
        constants = {node.outputs[0]: constant_value(node.attributes) for node in model.nodes if node.op_type == "Constant"}
        for index, (name, tensor) in enumerate({**model.initializers, **constants}.items()):
            attribute = self.value_attributes[name] = f"value_{index}"
            if name in model.initializers and tensor.is_floating_point():
                self.register_parameter(attribute, nn.Parameter(tensor, requires_grad=False))
            else:
                self.register_buffer(attribute, tensor)
        self.nodes: list[Node] = [node for node in model.nodes if node.op_type != "Constant"]
        self.released_after = intermediates_released(self.nodes, set(self.value_attributes) | set(self.output_names))

    def float_dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters()), torch.float32)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        context = Context(float_dtype=self.float_dtype(), opset=self.opset)
        values: dict[str, Tensor] = {name: getattr(self, attribute) for name, attribute in self.value_attributes.items()}
        for name, x in zip(self.input_names, inputs, strict=True):
            values[name] = x.to(context.float_dtype) if x.is_floating_point() else x
        for node, released in zip(self.nodes, self.released_after):
            arguments = [values[name] if name else None for name in node.inputs]
            context.outputs = len(node.outputs)
            try:
                results = OPERATORS[node.op_type](node.attributes, arguments, context)
            except UnsupportedOnnxOperator as error:
                if not self.source:
                    raise
                raise UnsupportedOnnxOperator(f"'{self.source}' cannot run here: its {node.op_type} node "
                                              f"'{node.name}' uses a setting not implemented ({error})") from error
            if isinstance(results, Tensor):
                results = (results,)
            for name, result in zip(node.outputs, results):
                if name:
                    values[name] = result
            for name in released:
                del values[name]
        return tuple(values[name] for name in self.output_names)
