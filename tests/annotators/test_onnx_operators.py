"""The ONNX operators of annotators/onnx_graph.py (run on graphs read by annotators/onnx_file.py)
against onnxruntime, operator by operator.

Why onnxruntime: it is the reference runtime DWPose users run these graphs with (yzd-v/DWPose and
comfyui_controlnet_aux load `yolox_l.onnx` and `dw-ll_ucoco_384.onnx` into an
onnxruntime.InferenceSession), so a graph run here must give what it gives.

What is compared: each case is a tiny ONNX model built with onnx.helper, as an exporter writes
one (constant inputs such as shapes, axes, pads, scales and indices are initializers, data
inputs are graph inputs), checked by onnx's checker with full shape inference, serialised, then
run both by `OnnxGraph(parse_model(bytes))` and by onnxruntime's CPU provider. Every output must
have the same shape and dtype (int64 stays int64, bool stays bool, float32 stays float32);
floating outputs must agree within FLOAT_TOLERANCE (absolute tolerance on the output's scale),
integers and bools exactly. Where an operator's inputs or attributes changed between operator
set versions, both forms are cases.
Settings the graph does not implement must be refused by name (UnsupportedOnnxOperator), never
run wrong; the refusal tests check those messages. A last test runs a float16 module against
onnxruntime's float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from annotators.onnx_file import parse_model
from annotators.onnx_graph import OnnxGraph, UnsupportedOnnxOperator

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

TensorProto = onnx.TensorProto
make_node = onnx.helper.make_node

DEFAULT_OPSET = 17      # the newest operator set before Reduce*'s axes became inputs (18)
IR_VERSION = 9          # ONNX IR version 9 holds operator sets up to 20; onnxruntime 1.32 reads it
SEED = 20240611
FLOAT_TOLERANCE = 1e-6  # relative, and absolute per unit of the output's largest magnitude, float32 against float32
HALF_RELATIVE_TOLERANCE = 1e-2  # float16 has an 11-bit significand: about 3 decimal digits
HALF_ABSOLUTE_TOLERANCE = 1e-2  # for the outputs near zero, where a relative bound means nothing
INT64_MAX = np.iinfo(np.int64).max  # exporters' "to the end" in Slice
MICROSOFT_DOMAIN = "com.microsoft"  # onnxruntime's own operators
ONNXRUNTIME_ERRORS_ONLY = 3  # onnxruntime's log severities: 0 verbose, 1 info, 2 warning, 3 error

RNG = np.random.default_rng(SEED)


# --- inputs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Initializer:
    """A constant input, stored in the graph as exporters store weights, shapes and axes."""
    array: np.ndarray


def floats(*shape: int, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    """Floats away from zero, for Log, Sqrt, Pow's base and variances."""
    return floats(*shape, low=0.1, high=3.0)


def integers(*shape: int, low: int = -5, high: int = 6) -> np.ndarray:
    return RNG.integers(low, high, shape, dtype=np.int64)


def booleans(*shape: int) -> np.ndarray:
    return RNG.integers(0, 2, shape).astype(np.bool_)


def weight(*shape: int) -> Initializer:
    return Initializer(floats(*shape))


def ints(*values: int) -> Initializer:
    """A 1-D int64 initializer: shapes, axes, pads, starts and ends."""
    return Initializer(np.array(values, dtype=np.int64))


def float_list(*values: float) -> Initializer:
    """A 1-D float32 initializer: Resize's scales and roi."""
    return Initializer(np.array(values, dtype=np.float32))


def int_scalar(value: int) -> Initializer:
    return Initializer(np.array(value, dtype=np.int64))


def float_scalar(value: float) -> Initializer:
    return Initializer(np.array(value, dtype=np.float32))


NO_VALUES = float_list()  # Resize-11's required roi (and scales beside sizes), left empty


# --- cases ----------------------------------------------------------------------------------------

@dataclass
class OnnxCase:
    nodes: list[Any]                 # onnx NodeProto, in graph order
    inputs: dict[str, np.ndarray]    # graph inputs, in order
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("y",)
    opset: int = DEFAULT_OPSET


def graph_case(case_id: str, nodes: list[Any], inputs: dict[str, np.ndarray]) -> Any:
    """A pytest parameter for a graph of several nodes, whose output is "y"."""
    return pytest.param(OnnxCase(nodes=nodes, inputs=inputs), id=case_id)


def one_node(op_type: str, node_inputs: list[np.ndarray | Initializer | None], outputs: int = 1,
             opset: int = DEFAULT_OPSET, **attributes: Any) -> OnnxCase:
    """A graph of one node: arrays are graph inputs, Initializers constants and None an optional
    input left out (""). Attributes are the node's."""
    names, inputs, initializers = [], {}, {}
    for index, value in enumerate(node_inputs):
        if value is None:
            names.append("")
        elif isinstance(value, Initializer):
            names.append(f"constant_{index}")
            initializers[names[-1]] = value.array
        else:
            names.append(f"x_{index}")
            inputs[names[-1]] = value
    output_names = ("y",) if outputs == 1 else tuple(f"y_{index}" for index in range(outputs))
    node = make_node(op_type, names, list(output_names), **attributes)
    return OnnxCase(nodes=[node], inputs=inputs, initializers=initializers, outputs=output_names, opset=opset)


def op_case(case_id: str, op_type: str, node_inputs: list[np.ndarray | Initializer | None], **settings: Any) -> Any:
    """A pytest parameter for one node (`settings`: one_node's outputs, opset and attributes)."""
    return pytest.param(one_node(op_type, node_inputs, **settings), id=case_id)


def serialise(case: OnnxCase, name: str = "case") -> bytes:
    """The case as the bytes of a valid ModelProto (onnx's checker and strict shape inference pass)."""
    inputs = [onnx.helper.make_tensor_value_info(input_name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                                                 array.shape) for input_name, array in case.inputs.items()]
    outputs = [onnx.helper.make_empty_tensor_value_info(output) for output in case.outputs]
    initializers = [onnx.numpy_helper.from_array(array, initializer_name)
                    for initializer_name, array in case.initializers.items()]
    graph = onnx.helper.make_graph(case.nodes, name, inputs, outputs, initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", case.opset)],
                                   ir_version=IR_VERSION)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # also types the outputs
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def run_ours(data: bytes, inputs: list[np.ndarray], dtype: torch.dtype = torch.float32) -> list[np.ndarray]:
    graph = OnnxGraph(parse_model(data)).to(dtype)
    with torch.no_grad():
        results = graph(*(torch.from_numpy(array) for array in inputs))
    return [result.detach().cpu().numpy() for result in results]


def run_onnxruntime(data: bytes, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = ONNXRUNTIME_ERRORS_ONLY  # not its optimisers' notes on old operator sets
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def assert_same_outputs(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert len(ours) == len(theirs)
    for index, (mine, reference) in enumerate(zip(ours, theirs)):
        message = f"output {index}"
        assert mine.dtype == reference.dtype, message
        assert mine.shape == reference.shape, message
        if np.issubdtype(reference.dtype, np.floating):
            # A sum's rounding error grows with its terms, not its result (convolutions run in the
            # order the device's backend picks): near-zero outputs get the output's scale.
            scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
            np.testing.assert_allclose(mine, reference, rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE * scale,
                                       err_msg=message)
        else:
            np.testing.assert_array_equal(mine, reference, err_msg=message)


# --- the operators and settings compared ------------------------------------------------------------

IMAGE = (1, 3, 7, 7)  # batch, channels, height, width: odd sizes so strides and ceil modes matter

CONVOLUTION_CASES = [
    op_case("conv_symmetric_pads_bias", "Conv", [floats(*IMAGE), weight(4, 3, 3, 3), weight(4)], pads=[1, 1, 1, 1]),
    op_case("conv_asymmetric_pads", "Conv", [floats(*IMAGE), weight(4, 3, 3, 3)], pads=[0, 1, 1, 0]),
    op_case("conv_asymmetric_pads_strides_2", "Conv", [floats(*IMAGE), weight(4, 3, 3, 3), weight(4)],
            pads=[1, 0, 0, 1], strides=[2, 2]),
    op_case("conv_strides_2", "Conv", [floats(*IMAGE), weight(4, 3, 3, 3), weight(4)], pads=[1, 1, 1, 1],
            strides=[2, 2]),
    op_case("conv_dilations_2", "Conv", [floats(*IMAGE), weight(4, 3, 3, 3), weight(4)], pads=[2, 2, 2, 2],
            dilations=[2, 2]),
    op_case("conv_depthwise_group_bias", "Conv", [floats(*IMAGE), weight(3, 1, 3, 3), weight(3)], group=3,
            pads=[1, 1, 1, 1]),
    op_case("conv_grouped_no_bias", "Conv", [floats(1, 4, 6, 6), weight(6, 2, 1, 1)], group=2),
    op_case("conv_no_bias_no_pads", "Conv", [floats(*IMAGE), weight(4, 3, 3, 3)]),
    op_case("conv_rectangular_kernel", "Conv", [floats(*IMAGE), weight(2, 3, 1, 3), weight(2)], pads=[0, 1, 0, 1]),
    op_case("conv_auto_pad_valid", "Conv", [floats(*IMAGE), weight(4, 3, 3, 3)], auto_pad="VALID"),
    op_case("conv_1d_strides_pads", "Conv", [floats(1, 2, 9), weight(3, 2, 3), weight(3)], pads=[1, 1], strides=[2]),
]

NORMALISATION_CASES = [
    op_case("batch_normalization_eval", "BatchNormalization",
            [floats(2, 3, 4, 5), weight(3), weight(3), weight(3), Initializer(positive(3))], epsilon=1e-3),
    op_case("layer_normalization_axis_minus_1", "LayerNormalization", [floats(2, 3, 4), weight(4), weight(4)],
            axis=-1),
    op_case("layer_normalization_axis_1", "LayerNormalization", [floats(2, 3, 4), weight(3, 4), weight(3, 4)],
            axis=1),
    op_case("layer_normalization_no_bias_epsilon", "LayerNormalization", [floats(2, 3, 4), weight(4)],
            epsilon=1e-2),
]

POOLING_CASES = [
    op_case("max_pool_pads", "MaxPool", [floats(*IMAGE)], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    op_case("max_pool_strides_2", "MaxPool", [floats(*IMAGE)], kernel_shape=[2, 2], strides=[2, 2]),
    op_case("max_pool_ceil_mode", "MaxPool", [floats(1, 2, 8, 8)], kernel_shape=[3, 3], strides=[2, 2],
            ceil_mode=1),
    op_case("max_pool_ceil_mode_pads", "MaxPool", [floats(*IMAGE)], kernel_shape=[3, 3], strides=[2, 2],
            pads=[1, 1, 1, 1], ceil_mode=1),
    op_case("max_pool_asymmetric_pads", "MaxPool", [floats(*IMAGE)], kernel_shape=[2, 2], pads=[0, 1, 1, 0]),
    op_case("max_pool_dilations_2", "MaxPool", [floats(*IMAGE)], kernel_shape=[2, 2], dilations=[2, 2]),
    op_case("max_pool_1d", "MaxPool", [floats(1, 2, 9)], kernel_shape=[3], strides=[2], pads=[1, 1]),
    op_case("average_pool_count_include_pad_0", "AveragePool", [floats(*IMAGE)], kernel_shape=[3, 3],
            strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
    op_case("average_pool_count_include_pad_1", "AveragePool", [floats(*IMAGE)], kernel_shape=[3, 3],
            strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    op_case("average_pool_no_pads", "AveragePool", [floats(*IMAGE)], kernel_shape=[2, 2], strides=[2, 2]),
    op_case("average_pool_ceil_mode", "AveragePool", [floats(1, 2, 8, 8)], kernel_shape=[3, 3], strides=[2, 2],
            ceil_mode=1),
    op_case("global_average_pool", "GlobalAveragePool", [floats(*IMAGE)]),
    op_case("global_max_pool", "GlobalMaxPool", [floats(*IMAGE)]),
]

SMALL_IMAGE = (1, 2, 4, 6)
DOUBLE_SIZE = float_list(1, 1, 2, 2)  # Resize's scales: batch and channels kept, height and width doubled
# The nearest Resize torch computes (F.interpolate's "nearest"), and Upsample's only one.
NEAREST_ASYMMETRIC_FLOOR = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
RESIZE_CASES = [
    op_case("resize11_nearest_asymmetric_floor_scales", "Resize", [floats(*SMALL_IMAGE), NO_VALUES, DOUBLE_SIZE],
            opset=11, **NEAREST_ASYMMETRIC_FLOOR),
    op_case("resize13_nearest_asymmetric_floor_scales", "Resize", [floats(*SMALL_IMAGE), None, DOUBLE_SIZE],
            opset=13, **NEAREST_ASYMMETRIC_FLOOR),
    op_case("resize11_nearest_sizes", "Resize", [floats(*SMALL_IMAGE), NO_VALUES, NO_VALUES, ints(1, 2, 8, 12)],
            opset=11, **NEAREST_ASYMMETRIC_FLOOR),
    op_case("resize13_nearest_sizes", "Resize", [floats(*SMALL_IMAGE), None, None, ints(1, 2, 8, 12)],
            opset=13, **NEAREST_ASYMMETRIC_FLOOR),
    op_case("resize13_nearest_sizes_ratio_1_5", "Resize", [floats(*SMALL_IMAGE), None, None, ints(1, 2, 6, 9)],
            opset=13, **NEAREST_ASYMMETRIC_FLOOR),
    op_case("resize11_linear_half_pixel", "Resize", [floats(*SMALL_IMAGE), NO_VALUES, DOUBLE_SIZE],
            opset=11, mode="linear", coordinate_transformation_mode="half_pixel"),
    op_case("resize13_linear_half_pixel", "Resize", [floats(*SMALL_IMAGE), None, DOUBLE_SIZE],
            opset=13, mode="linear"),  # half_pixel is the default
    op_case("resize13_linear_half_pixel_sizes_downscale", "Resize",
            [floats(*SMALL_IMAGE), None, None, ints(1, 2, 3, 4)], opset=13, mode="linear",
            coordinate_transformation_mode="half_pixel"),
    op_case("resize11_linear_pytorch_half_pixel", "Resize", [floats(*SMALL_IMAGE), NO_VALUES, DOUBLE_SIZE],
            opset=11, mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    op_case("resize13_linear_pytorch_half_pixel", "Resize", [floats(*SMALL_IMAGE), None, None, ints(1, 2, 7, 9)],
            opset=13, mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    op_case("resize11_linear_align_corners", "Resize", [floats(*SMALL_IMAGE), NO_VALUES, DOUBLE_SIZE],
            opset=11, mode="linear", coordinate_transformation_mode="align_corners"),
    op_case("resize13_linear_align_corners_sizes", "Resize", [floats(*SMALL_IMAGE), None, None, ints(1, 2, 7, 11)],
            opset=13, mode="linear", coordinate_transformation_mode="align_corners"),
    # ONNX maps coordinates with the scale given, not the output's ratio (7 / 5 here)
    op_case("resize13_linear_half_pixel_scale_1_5", "Resize", [floats(1, 1, 5, 5), None, float_list(1, 1, 1.5, 1.5)],
            opset=13, mode="linear"),
    op_case("resize13_nearest_scale_1_5", "Resize", [floats(1, 1, 5, 5), None, float_list(1, 1, 1.5, 1.5)],
            opset=13, **NEAREST_ASYMMETRIC_FLOOR),
    op_case("resize10_nearest_scales", "Resize", [floats(*SMALL_IMAGE), DOUBLE_SIZE], opset=10, mode="nearest"),
    op_case("upsample9_nearest_scales", "Upsample", [floats(*SMALL_IMAGE), DOUBLE_SIZE], opset=9, mode="nearest"),
]

SLICED = (4, 6, 5)

SLICE_CASES = [
    op_case("slice13_starts_ends_axes_steps", "Slice",
            [floats(*SLICED), ints(1, 0), ints(3, 5), ints(0, 2), ints(1, 2)]),
    op_case("slice13_step_2", "Slice", [floats(*SLICED), ints(0), ints(6), ints(1), ints(2)]),
    op_case("slice13_negative_start_to_int64_max", "Slice", [floats(*SLICED), ints(-3), ints(INT64_MAX), ints(1)]),
    op_case("slice13_negative_end", "Slice", [floats(*SLICED), ints(1), ints(-1), ints(2)]),
    op_case("slice13_negative_axis", "Slice", [floats(*SLICED), ints(1), ints(4), ints(-1)]),
    op_case("slice13_end_past_size", "Slice", [floats(*SLICED), ints(2), ints(1000), ints(0)]),
    op_case("slice13_axes_omitted", "Slice", [floats(*SLICED), ints(1, 2), ints(3, INT64_MAX)]),
    op_case("slice13_int64_data", "Slice", [integers(7), ints(2), ints(5), ints(0)]),
    op_case("slice11_step_2_negative_start", "Slice", [floats(*SLICED), ints(-5), ints(INT64_MAX), ints(1), ints(2)],
            opset=11),
    op_case("slice9_attributes", "Slice", [floats(*SLICED)], opset=9, starts=[1, -4], ends=[3, 1000], axes=[0, 2]),
    op_case("slice9_attributes_axes_omitted", "Slice", [floats(*SLICED)], opset=9, starts=[0, 1], ends=[2, 5]),
]

GATHERED = (4, 3)

GATHER_CASES = [
    op_case("gather_scalar_index_axis_0", "Gather", [floats(*GATHERED), int_scalar(2)], axis=0),
    op_case("gather_scalar_index_axis_1", "Gather", [floats(*GATHERED), int_scalar(1)], axis=1),
    op_case("gather_1d_index_axis_0", "Gather", [floats(*GATHERED), ints(3, 0, 3)], axis=0),
    op_case("gather_1d_index_axis_1", "Gather", [floats(*GATHERED), ints(0, 2)], axis=1),
    op_case("gather_negative_indices_axis_0", "Gather", [floats(*GATHERED), ints(-1, 0, -4)], axis=0),
    op_case("gather_negative_indices_axis_1", "Gather", [floats(*GATHERED), ints(-1, 1)], axis=1),
    op_case("gather_2d_indices", "Gather", [floats(*GATHERED), Initializer(np.array([[0, 1], [3, -2]], np.int64))]),
    op_case("gather_negative_axis", "Gather", [floats(*GATHERED), ints(2, 0)], axis=-1),
    op_case("gather_int64_data_scalar_index", "Gather", [integers(5), int_scalar(-2)]),
]

SPLIT_CASES = [
    op_case("split11_split_attribute", "Split", [floats(2, 6, 3)], outputs=2, opset=11, axis=1, split=[2, 4]),
    op_case("split11_equal", "Split", [floats(2, 6, 3)], outputs=2, opset=11, axis=1),
    op_case("split13_split_input", "Split", [floats(2, 6, 3), ints(1, 2, 3)], outputs=3, opset=13, axis=1),
    op_case("split13_equal_three_outputs", "Split", [floats(6, 2)], outputs=3, opset=13),
    op_case("split13_negative_axis", "Split", [floats(2, 3, 5), ints(4, 1)], outputs=2, opset=13, axis=-1),
    op_case("split18_num_outputs_uneven", "Split", [floats(2, 7)], outputs=3, opset=18, axis=1, num_outputs=3),
    op_case("split18_num_outputs_even", "Split", [floats(2, 6)], outputs=2, opset=18, axis=1, num_outputs=2),
]

SQUEEZED = (2, 1, 3, 1)

SQUEEZE_CASES = [
    op_case("squeeze11_axes_attribute", "Squeeze", [floats(*SQUEEZED)], opset=11, axes=[1]),
    op_case("squeeze11_two_axes_negative", "Squeeze", [floats(*SQUEEZED)], opset=11, axes=[1, -1]),
    op_case("squeeze11_no_axes", "Squeeze", [floats(*SQUEEZED)], opset=11),
    op_case("squeeze13_axes_input", "Squeeze", [floats(*SQUEEZED), ints(3)], opset=13),
    op_case("squeeze13_two_axes_negative", "Squeeze", [floats(*SQUEEZED), ints(-3, 3)], opset=13),
    op_case("squeeze13_no_axes", "Squeeze", [floats(*SQUEEZED)], opset=13),
    op_case("unsqueeze11_axes_attribute", "Unsqueeze", [floats(2, 3)], opset=11, axes=[0]),
    op_case("unsqueeze11_two_axes_negative", "Unsqueeze", [floats(2, 3)], opset=11, axes=[0, -1]),
    op_case("unsqueeze13_axes_input", "Unsqueeze", [floats(2, 3), ints(1)], opset=13),
    op_case("unsqueeze13_two_axes_negative", "Unsqueeze", [floats(2, 3), ints(1, -2)], opset=13),
    op_case("unsqueeze13_scalar", "Unsqueeze", [integers(), ints(0)], opset=13),
]

SHAPE_CASES = [
    op_case("reshape_zero_and_minus_1", "Reshape", [floats(2, 3, 4), ints(0, -1)]),
    op_case("reshape_zero_middle_minus_1", "Reshape", [floats(2, 3, 4), ints(0, 3, -1, 2)]),
    op_case("reshape_to_scalar_shape", "Reshape", [floats(1, 1), ints()]),
    op_case("flatten_axis_1", "Flatten", [floats(2, 3, 4)], axis=1),
    op_case("flatten_axis_2", "Flatten", [floats(2, 3, 4)], axis=2),
    op_case("flatten_axis_0", "Flatten", [floats(2, 3, 4)], axis=0),
    op_case("flatten_axis_minus_1", "Flatten", [floats(2, 3, 4)], axis=-1),
    op_case("transpose_perm", "Transpose", [floats(2, 3, 4, 5)], perm=[0, 2, 3, 1]),
    op_case("transpose_no_perm", "Transpose", [floats(2, 3, 4)]),
    op_case("concat_negative_axis", "Concat", [floats(2, 3, 1), floats(2, 3, 4), floats(2, 3, 2)], axis=-1),
    op_case("concat_int64_axis_0", "Concat", [integers(2), ints(7, 8, 9)], axis=0),
    op_case("shape", "Shape", [floats(2, 3, 4)]),
    op_case("shape15_start_end", "Shape", [floats(2, 3, 4, 5)], opset=15, start=1, end=-1),
    op_case("shape15_negative_start", "Shape", [floats(2, 3, 4, 5)], opset=15, start=-2),
    op_case("expand_bidirectional", "Expand", [floats(3, 1), ints(2, 1, 4)]),
    op_case("expand_shorter_shape", "Expand", [floats(2, 3, 1), ints(4)]),
    op_case("tile", "Tile", [floats(2, 3), ints(2, 3)]),
    op_case("tile_int64", "Tile", [integers(2, 1), ints(1, 4)]),
    op_case("cast_float_to_int64", "Cast", [floats(3, 4, low=-6, high=6)], to=TensorProto.INT64),
    op_case("cast_int64_to_float", "Cast", [integers(3, 4)], to=TensorProto.FLOAT),
    op_case("cast_float_to_bool", "Cast", [np.round(floats(3, 4))], to=TensorProto.BOOL),
    op_case("cast_bool_to_float", "Cast", [booleans(3, 4)], to=TensorProto.FLOAT),
]

CONSTANT_CASES = [
    op_case("constant_of_shape_default", "ConstantOfShape", [ints(2, 3)]),
    op_case("constant_of_shape_float_value", "ConstantOfShape", [ints(2, 3)],
            value=onnx.helper.make_tensor("value", TensorProto.FLOAT, [1], [2.5])),
    op_case("constant_of_shape_int64_value", "ConstantOfShape", [ints(3)],
            value=onnx.helper.make_tensor("value", TensorProto.INT64, [1], [7])),
    graph_case("constant_of_shape_from_shape", [make_node("Shape", ["x"], ["shape"]),
                                                make_node("ConstantOfShape", ["shape"], ["y"])],
               {"x": floats(2, 3)}),
    op_case("range_int64", "Range", [int_scalar(1), int_scalar(10), int_scalar(3)]),
    op_case("range_int64_negative_delta", "Range", [int_scalar(10), int_scalar(1), int_scalar(-3)]),
    op_case("range_float", "Range", [float_scalar(0.5), float_scalar(3.0), float_scalar(0.75)]),
    graph_case("constant_value_tensor",
               [make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(floats(2, 3))),
                make_node("Add", ["x", "c"], ["y"])], {"x": floats(2, 3)}),
    graph_case("constant_value_float", [make_node("Constant", [], ["c"], value_float=1.5),
                                        make_node("Mul", ["x", "c"], ["y"])], {"x": floats(2, 3)}),
    graph_case("constant_value_ints", [make_node("Constant", [], ["shape"], value_ints=[3, -1]),
                                       make_node("Reshape", ["x", "shape"], ["y"])], {"x": floats(2, 3)}),
    graph_case("constant_value_int", [make_node("Constant", [], ["c"], value_int=4),
                                      make_node("Add", ["x", "c"], ["y"])], {"x": integers(2, 3)}),
    graph_case("constant_as_graph_output", [make_node("Constant", [], ["y"], value_ints=[1, 2, 3])], {}),
]

PADDED = (1, 2, 3, 4)
PADS = ints(0, 0, 1, 2, 0, 0, 2, 1)  # begins of all axes, then ends: rows 1 before 2 after, columns 2 and 1

PAD_CASES = [
    op_case("pad13_constant_value_input", "Pad", [floats(*PADDED), PADS, float_scalar(1.5)], opset=13),
    op_case("pad11_constant_default_value", "Pad", [floats(*PADDED), PADS], opset=11),
    op_case("pad13_negative_pads_crop", "Pad", [floats(*PADDED), ints(0, 0, -1, 1, 0, 0, 1, -2)], opset=13),
    op_case("pad13_reflect", "Pad", [floats(*PADDED), PADS], opset=13, mode="reflect"),
    op_case("pad13_edge", "Pad", [floats(*PADDED), PADS], opset=13, mode="edge"),
    op_case("pad13_reflect_3d_last_axis", "Pad", [floats(1, 2, 5), ints(0, 0, 2, 0, 0, 3)], opset=13,
            mode="reflect"),
    op_case("pad18_axes_input", "Pad", [floats(*PADDED), ints(1, 2, 2, 1), float_scalar(0.5), ints(2, 3)], opset=18),
    op_case("pad2_pads_attribute", "Pad", [floats(*PADDED)], opset=2, pads=[0, 0, 1, 2, 0, 0, 2, 1], value=-1.0),
    op_case("pad2_edge_attribute", "Pad", [floats(*PADDED)], opset=2, pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="edge"),
]

ELEMENTWISE_CASES = [
    op_case("add_broadcast", "Add", [floats(2, 3, 4), weight(4)]),
    op_case("sub_broadcast_both", "Sub", [floats(2, 1, 4), floats(3, 1)]),
    op_case("mul_broadcast", "Mul", [floats(2, 3, 4), weight(3, 1)]),
    op_case("div_broadcast", "Div", [floats(2, 3, 4), Initializer(positive(4))]),
    op_case("div_int64_truncates_toward_zero", "Div",
            [np.array([7, -7, 7, -7, 6, -1], np.int64), np.array([2, 2, -2, -2, 4, 3], np.int64)]),
    op_case("add_int64", "Add", [integers(2, 3), integers(3)]),
    op_case("pow_float_exponent", "Pow", [positive(2, 3), floats(2, 3)]),
    op_case("pow_square_negative_base", "Pow", [floats(2, 3), float_scalar(2.0)]),
    op_case("pow_int64_base_float_exponent", "Pow", [integers(4, low=1, high=4), float_scalar(2.0)]),  # the base's type
    op_case("max_three_inputs", "Max", [floats(2, 3), floats(3), floats(2, 1)]),
    op_case("min_three_inputs", "Min", [floats(2, 3), floats(3), floats(2, 1)]),
    op_case("sum_three_inputs", "Sum", [floats(2, 3), floats(3), floats(2, 1)]),
    op_case("equal_int64", "Equal", [integers(2, 3, low=0, high=3), integers(3, low=0, high=3)]),
    op_case("equal_float", "Equal", [np.round(floats(2, 3)), np.round(floats(2, 3))]),
    op_case("greater", "Greater", [floats(2, 3), floats(3)]),
    op_case("less", "Less", [floats(2, 3), floats(2, 1)]),
    op_case("where_broadcast", "Where", [booleans(2, 1, 4), floats(3, 4), float_scalar(-1.0)]),
    op_case("where_int64", "Where", [booleans(5), integers(5), integers(5)]),
    op_case("not", "Not", [booleans(2, 3)]),
    op_case("relu", "Relu", [floats(2, 3)]),
    op_case("sigmoid", "Sigmoid", [floats(2, 3, low=-8, high=8)]),
    op_case("tanh", "Tanh", [floats(2, 3)]),
    op_case("exp", "Exp", [floats(2, 3)]),
    op_case("log_positive", "Log", [positive(2, 3)]),
    op_case("sqrt_positive", "Sqrt", [positive(2, 3)]),
    op_case("neg", "Neg", [floats(2, 3)]),
    op_case("neg_int64", "Neg", [integers(4)]),
    op_case("abs", "Abs", [floats(2, 3)]),
    op_case("reciprocal", "Reciprocal", [positive(2, 3)]),
    op_case("erf", "Erf", [floats(2, 3)]),
    op_case("floor", "Floor", [floats(2, 3, low=-4, high=4)]),
    op_case("ceil", "Ceil", [floats(2, 3, low=-4, high=4)]),
    op_case("identity", "Identity", [floats(2, 3)]),
    op_case("identity_int64", "Identity", [integers(2, 3)]),
    op_case("hard_sigmoid_default", "HardSigmoid", [floats(2, 5, low=-5, high=5)]),
    op_case("hard_sigmoid_alpha_beta", "HardSigmoid", [floats(2, 5, low=-5, high=5)], alpha=0.3, beta=0.4),
    op_case("hard_swish14", "HardSwish", [floats(2, 5, low=-5, high=5)], opset=14),
    op_case("leaky_relu_default", "LeakyRelu", [floats(2, 3)]),
    op_case("leaky_relu_alpha", "LeakyRelu", [floats(2, 3)], alpha=0.2),
    op_case("clip6_min_max_attributes", "Clip", [floats(2, 5)], opset=6, min=-0.5, max=0.7),
    op_case("clip6_min_attribute_only", "Clip", [floats(2, 5)], opset=6, min=-0.5),
    op_case("clip11_min_max_inputs", "Clip", [floats(2, 5), float_scalar(-0.5), float_scalar(0.7)], opset=11),
    op_case("clip11_min_input_only", "Clip", [floats(2, 5), float_scalar(0.0)], opset=11),
    op_case("clip13_min_input_max_left_out", "Clip", [floats(2, 5), float_scalar(-0.3), None], opset=13),
    op_case("clip13_max_input_min_left_out", "Clip", [floats(2, 5), None, float_scalar(0.3)], opset=13),
    op_case("softmax11_axis_1_flattens", "Softmax", [floats(2, 3, 4)], opset=11, axis=1),
    op_case("softmax11_default_axis", "Softmax", [floats(2, 3, 4)], opset=11),
    op_case("softmax13_axis_1", "Softmax", [floats(2, 3, 4)], opset=13, axis=1),
    op_case("softmax13_default_axis", "Softmax", [floats(2, 3, 4)], opset=13),
]

LINEAR_CASES = [
    op_case("matmul_batched_3d_by_2d", "MatMul", [floats(2, 3, 4), weight(4, 5)]),
    op_case("matmul_batched_3d_by_3d", "MatMul", [floats(2, 3, 4), floats(2, 4, 5)]),
    op_case("gemm_trans_alpha_beta_broadcast_c", "Gemm", [floats(4, 3), weight(5, 4), weight(5)],
            transA=1, transB=1, alpha=0.5, beta=2.0),
    op_case("gemm_column_c", "Gemm", [floats(3, 4), weight(4, 5), weight(3, 1)], beta=0.5),
    op_case("gemm_without_c", "Gemm", [floats(3, 4), weight(5, 4)], transB=1),
]

REDUCED = (2, 3, 4)


def reduce_cases() -> list[Any]:
    """ReduceMean/Max/Min/L2 with keepdims 0 and 1, axes as an attribute (opset 13) and as an input
    (opset 18), plus ReduceSum, whose axes became an input already at opset 13."""
    cases = []
    for op_type in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2"):
        for keepdims in (0, 1):
            cases.append(op_case(f"{op_type}_opset13_axes_attribute_keepdims_{keepdims}", op_type, [floats(*REDUCED)],
                                 opset=13, axes=[1, -1], keepdims=keepdims))
            cases.append(op_case(f"{op_type}_opset18_axes_input_keepdims_{keepdims}", op_type,
                                 [floats(*REDUCED), ints(-1, 0)], opset=18, keepdims=keepdims))
    return cases + [
        op_case("ReduceSum_opset11_axes_attribute", "ReduceSum", [floats(*REDUCED)], opset=11, axes=[1]),
        op_case("ReduceSum_opset11_axes_attribute_keepdims_0", "ReduceSum", [floats(*REDUCED)], opset=11, axes=[0, 2],
                keepdims=0),
        op_case("ReduceSum_opset13_axes_input", "ReduceSum", [floats(*REDUCED), ints(1, -1)], opset=13),
        op_case("ReduceSum_opset13_axes_input_keepdims_0", "ReduceSum", [floats(*REDUCED), ints(1)], opset=13,
                keepdims=0),
        op_case("ReduceSum_opset13_no_axes_all", "ReduceSum", [floats(*REDUCED)], opset=13),
        op_case("ReduceSum_opset13_no_axes_all_keepdims_0", "ReduceSum", [floats(*REDUCED)], opset=13, keepdims=0),
        op_case("ReduceSum_opset13_empty_axes_all", "ReduceSum", [floats(*REDUCED), ints()], opset=13),
        op_case("ReduceSum_opset13_noop_with_empty_axes", "ReduceSum", [floats(*REDUCED)], opset=13,
                noop_with_empty_axes=1),
        op_case("ReduceMean_opset11_no_axes_all", "ReduceMean", [floats(*REDUCED)], opset=11, keepdims=0),
        op_case("ReduceMean_opset18_no_axes_all", "ReduceMean", [floats(*REDUCED)], opset=18),
        op_case("ReduceMax_opset18_noop_with_empty_axes", "ReduceMax", [floats(*REDUCED)], opset=18,
                noop_with_empty_axes=1),
    ]


CASES = (CONVOLUTION_CASES + NORMALISATION_CASES + POOLING_CASES + RESIZE_CASES + SLICE_CASES + GATHER_CASES
         + SPLIT_CASES + SQUEEZE_CASES + SHAPE_CASES + CONSTANT_CASES + PAD_CASES + ELEMENTWISE_CASES
         + LINEAR_CASES + reduce_cases())


@pytest.mark.parametrize("case", CASES)
def test_operator_equals_onnxruntime(case: OnnxCase):
    data = serialise(case)
    theirs = run_onnxruntime(data, case.inputs)
    ours = run_ours(data, list(case.inputs.values()))
    assert_same_outputs(ours, theirs)


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


# --- refusals --------------------------------------------------------------------------------------

def test_operators_not_implemented_are_refused_by_name_when_built():
    case = OnnxCase(nodes=[make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"]),
                           make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->i")],
                    inputs={"boxes": floats(1, 4, 4), "scores": floats(1, 1, 4), "x": floats(2, 3)},
                    outputs=("selected", "y"))
    model = parse_model(serialise(case))
    with pytest.raises(UnsupportedOnnxOperator) as error:
        OnnxGraph(model)
    assert str(error.value) == "the graph uses ONNX operators not implemented here: Einsum, NonMaxSuppression"


def test_operator_of_another_domain_is_refused_by_name_when_built():
    """A runtime's own operator (here in onnxruntime's com.microsoft domain) is not the standard
    operator of the same name, so it is refused even though the name is implemented. (Not
    serialise(): onnx's checker does not know the domain's operators.)"""
    nodes = [make_node("Relu", ["x"], ["r"]), make_node("Sigmoid", ["r"], ["y"], domain=MICROSOFT_DOMAIN)]
    value = onnx.helper.make_tensor_value_info  # name, element type, shape
    graph = onnx.helper.make_graph(nodes, "other_domain", [value("x", TensorProto.FLOAT, [2, 3])],
                                   [value("y", TensorProto.FLOAT, [2, 3])])
    opsets = [onnx.helper.make_opsetid("", DEFAULT_OPSET), onnx.helper.make_opsetid(MICROSOFT_DOMAIN, 1)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)
    with pytest.raises(UnsupportedOnnxOperator) as error:
        OnnxGraph(parse_model(model.SerializeToString()))
    assert str(error.value) == f"the graph uses ONNX operators not implemented here: {MICROSOFT_DOMAIN}.Sigmoid"



def refused(case_id: str, message: str, op_type: str, node_inputs: list[np.ndarray | Initializer | None],
            **settings: Any) -> Any:
    """A pytest parameter (case, the exact UnsupportedOnnxOperator message) for one node."""
    return pytest.param(one_node(op_type, node_inputs, **settings), message, id=case_id)


UNSUPPORTED_SETTINGS = [
    refused("resize_cubic", "Resize mode=cubic, coordinate_transformation_mode=half_pixel, "
            "nearest_mode=round_prefer_floor is not supported",
            "Resize", [floats(*SMALL_IMAGE), None, DOUBLE_SIZE], opset=13, mode="cubic"),
    refused("resize_nearest_half_pixel_round_prefer_floor", "Resize mode=nearest, "
            "coordinate_transformation_mode=half_pixel, nearest_mode=round_prefer_floor is not supported",
            "Resize", [floats(*SMALL_IMAGE), None, DOUBLE_SIZE], opset=13, mode="nearest"),
    refused("upsample9_linear_asymmetric", "Resize mode=linear, coordinate_transformation_mode=asymmetric, "
            "nearest_mode=floor is not supported",
            "Upsample", [floats(*SMALL_IMAGE), DOUBLE_SIZE], opset=9, mode="linear"),
    # ONNX samples coordinate 0 on an axis resized to length 1 with pytorch_half_pixel; torch the centre
    refused("resize_linear_pytorch_half_pixel_to_length_1",
            "Resize with pytorch_half_pixel coordinates to a length of 1 is not supported",
            "Resize", [floats(*SMALL_IMAGE), None, None, ints(1, 2, 1, 9)], opset=13, mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel"),
    refused("resize18_antialias", "Resize with antialias=1 is not supported",
            "Resize", [floats(1, 2, 8, 8), None, float_list(1, 1, 0.5, 0.5)], opset=18, mode="linear", antialias=1),
    refused("resize18_keep_aspect_ratio", "Resize with keep_aspect_ratio_policy=not_larger is not supported",
            "Resize", [floats(*SMALL_IMAGE), None, None, ints(1, 2, 8, 8)], opset=18, **NEAREST_ASYMMETRIC_FLOOR,
            keep_aspect_ratio_policy="not_larger"),
    refused("resize18_axes", "Resize with axes=[2, 3] is not supported",
            "Resize", [floats(*SMALL_IMAGE), None, None, ints(8, 12)], opset=18, **NEAREST_ASYMMETRIC_FLOOR, axes=[2, 3]),
    refused("pad_reflect_four_axes", "Pad mode=reflect on more than the last 3 axes is not supported",
            "Pad", [floats(2, 3, 4, 5), ints(1, 1, 1, 1, 1, 1, 1, 1)], opset=13, mode="reflect"),
    refused("resize_channel_axis", "Resize of the batch or channel axis is not supported",
            "Resize", [floats(*SMALL_IMAGE), None, float_list(1, 2, 1, 1)], opset=13, **NEAREST_ASYMMETRIC_FLOOR),
    refused("average_pool_asymmetric_pads", "AveragePool with uneven padding is not supported",
            "AveragePool", [floats(*IMAGE)], kernel_shape=[2, 2], pads=[0, 1, 1, 0]),
    refused("conv_auto_pad_same_upper", "auto_pad=SAME_UPPER is not supported",
            "Conv", [floats(*IMAGE), weight(4, 3, 3, 3)], auto_pad="SAME_UPPER"),
    refused("slice_negative_step", "Slice with step -1 is not supported",
            "Slice", [floats(*SLICED), ints(-1), ints(-INT64_MAX), ints(1), ints(-1)]),
]


@pytest.mark.parametrize("case, message", UNSUPPORTED_SETTINGS)
def test_settings_not_implemented_are_refused_when_run(case: OnnxCase, message: str):
    """Valid graphs (onnxruntime runs each) whose operator is implemented but not with this setting:
    refused by name when run, not computed another way."""
    data = serialise(case)
    run_onnxruntime(data, case.inputs)  # the setting is valid ONNX
    graph = OnnxGraph(parse_model(data))  # the operator itself is known
    with pytest.raises(UnsupportedOnnxOperator) as error:
        graph(*(torch.from_numpy(array) for array in case.inputs.values()))
    assert str(error.value) == message


# --- precision -----------------------------------------------------------------------------------------

def test_half_precision_module_casts_to_its_own_float_dtype():
    """A float16 module computes in float16, and a Cast to FLOAT follows the module's dtype
    (Context.float_dtype) rather than mixing in float32: the result is float16 and close to
    onnxruntime's float32 result."""
    case = OnnxCase(nodes=[make_node("Conv", ["x", "w", "b"], ["convolved"], pads=[1, 1, 1, 1]),
                           make_node("Cast", ["convolved"], ["cast"], to=TensorProto.FLOAT),
                           make_node("Add", ["cast", "offset"], ["y"])],
                    inputs={"x": floats(*IMAGE)},
                    initializers={"w": floats(4, 3, 3, 3), "b": floats(4), "offset": floats(4, 1, 1)})
    data = serialise(case)
    (theirs,) = run_onnxruntime(data, case.inputs)
    (ours,) = run_ours(data, list(case.inputs.values()), dtype=torch.float16)
    assert theirs.dtype == np.float32
    assert ours.dtype == np.float16
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.astype(np.float32), theirs, rtol=HALF_RELATIVE_TOLERANCE,
                               atol=HALF_ABSOLUTE_TOLERANCE)
