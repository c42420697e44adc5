"""Reading ONNX files without the onnx package (annotators/onnx_file.py) and running their graphs
with torch (annotators/onnx_graph.py), on whole exported networks.

- The parse equals the onnx package's (onnx 1.23): every weight, node, attribute, input shape.
- DWPose's two networks (narrow, random weights), exported by torch's TorchScript exporter as the
  published files were (BatchNorm folded into the convolutions), at operator sets 11, 13 and 17:
  our run of the graph equals onnxruntime's, the runtime comfyui_controlnet_aux runs them with,
  and the torch network it was exported from.
Single operators against onnxruntime: test_onnx_operators.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from annotators.onnx_file import OnnxFormatError, load_onnx, parse_model
from annotators.onnx_graph import OnnxGraph
from annotators.weights import BadWeightsError
from workflows.random_models import MegviiYoloxExport, save_onnx

from .test_dwpose import small_networks

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

OPSETS = (11, 13, 17)  # the published exports' (11) and two later sets, whose operators take settings as inputs
RUNTIME_TOLERANCE = 1e-5  # float32, the same operations summed in other orders
EXPORT_TOLERANCE = 1e-4   # against the torch network: BatchNorm folded into the weights first


def exported(kind: str, folder: Path, opset: int) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    """(file, the network exported, an input for it): DWPose's detector in Megvii's layout at
    640x640, or its pose network on a batch of two crops with the batch left free."""
    networks = small_networks()
    generator = torch.Generator().manual_seed(opset)
    if kind == "detector":
        network, shape, batch_axis = MegviiYoloxExport(networks.detector), (1, 3, 640, 640), False
        example = torch.rand(shape, generator=generator) * 255
    else:
        network, shape, batch_axis = networks.pose, (1, 3, 96, 64), True
        example = torch.randn((2,) + shape[1:], generator=generator)
    path = save_onnx(network, shape, folder / f"{kind}_{opset}.onnx", batch_axis=batch_axis, opset=opset)
    return path, network, example


def attribute_value(attribute) -> object:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def dimension(dim) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param if dim.HasField("dim_param") else None


@pytest.mark.parametrize("kind", ["detector", "pose"])
def test_parse_equals_the_onnx_package(tmp_path, kind):
    path, _, _ = exported(kind, tmp_path, opset=17)
    ours, theirs = load_onnx(str(path)), onnx.load(str(path))
    graph = theirs.graph
    assert ours.opset == 17
    weights = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
    assert list(ours.initializers) == list(weights)
    for name, array in weights.items():
        assert ours.initializers[name].numpy().dtype == array.dtype
        np.testing.assert_array_equal(ours.initializers[name].numpy(), array)
    assert len(ours.nodes) == len(graph.node)
    for node, reference in zip(ours.nodes, graph.node):
        assert (node.op_type, node.inputs, node.outputs, node.name, node.domain) == (
            reference.op_type, list(reference.input), list(reference.output), reference.name, reference.domain)
        expected = {attribute.name: attribute_value(attribute) for attribute in reference.attribute}
        assert set(node.attributes) == set(expected)
        for name, value in expected.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(node.attributes[name].numpy(), value)
            else:
                assert node.attributes[name] == pytest.approx(value) if isinstance(value, float) else node.attributes[name] == value
    assert [(i.name, i.shape) for i in ours.inputs] == [
        (i.name, tuple(dimension(d) for d in i.type.tensor_type.shape.dim)) for i in graph.input if i.name not in weights]
    assert [o.name for o in ours.outputs] == [o.name for o in graph.output]
    assert ours.inputs[0].shape[0] == ("batch" if kind == "pose" else 1)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kind", ["detector", "pose"])
def test_graph_runs_as_onnxruntime_and_the_exported_network(tmp_path, kind, opset):
    path, network, example = exported(kind, tmp_path, opset)
    graph = OnnxGraph(load_onnx(str(path)))
    with torch.no_grad():
        ours = graph(example)
        direct = network(example)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": example.numpy()})
    direct = direct if isinstance(direct, tuple) else (direct,)
    assert len(ours) == len(theirs) == len(direct)
    for mine, runtime, torch_network in zip(ours, theirs, direct):
        assert mine.dtype == torch.float32 and mine.shape == runtime.shape
        np.testing.assert_allclose(mine.numpy(), runtime, rtol=RUNTIME_TOLERANCE, atol=RUNTIME_TOLERANCE)
        np.testing.assert_allclose(mine.numpy(), torch_network.numpy(), rtol=EXPORT_TOLERANCE, atol=EXPORT_TOLERANCE)
        assert runtime.std() > 0.01  # not a constant output


def test_half_precision_graph_stays_close(tmp_path):
    path, _, example = exported("pose", tmp_path, opset=11)
    graph = OnnxGraph(load_onnx(str(path)))
    with torch.no_grad():
        full = graph(example)
        half = graph.to(torch.float16)(example)
    for single, reduced in zip(full, half):
        assert reduced.dtype == torch.float16
        np.testing.assert_allclose(reduced.float().numpy(), single.numpy(), atol=0.02)


def test_half_float_values_stored_as_int32_data_are_their_bit_patterns():
    values = np.array([[0.5, -2.25, 65504.0]], dtype=np.float16)
    tensor = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT16, values.shape, values.flatten().tolist())
    assert not tensor.raw_data and len(tensor.int32_data) == values.size  # the field this case is about
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, values.shape)], initializer=[tensor]))
    parsed = parse_model(model.SerializeToString())
    assert parsed.initializers["w"].dtype == torch.float16
    np.testing.assert_array_equal(parsed.initializers["w"].numpy(), values)


def test_weights_kept_in_a_separate_file_are_refused(tmp_path):
    tensor = onnx.numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    onnx.external_data_helper.set_external_data(tensor, location="weights.bin")
    tensor.ClearField("raw_data")
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, (2, 2))], initializer=[tensor]))
    with pytest.raises(OnnxFormatError) as error:
        parse_model(model.SerializeToString())
    assert str(error.value) == "tensor 'w' keeps its data in a separate file, which is not read"
    path = tmp_path / "external.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(BadWeightsError) as error:
        load_onnx(str(path))
    assert str(error.value) == ("'external.onnx' is not a readable ONNX file (tensor 'w' keeps its data in a "
                                "separate file, which is not read): download the file published under this name again")


def test_a_file_without_a_graph_is_refused(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])).SerializeToString())
    with pytest.raises(BadWeightsError) as error:
        load_onnx(str(path))
    assert str(error.value) == "'empty.onnx' holds no ONNX graph: download the file published under this name again"


def test_a_setting_refused_when_run_names_the_file_and_node():
    """Settings are only known when a node runs (a Resize's scales may be computed): the refusal
    then names the file and the node, so a user can report which file and where."""
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales")
    node = onnx.helper.make_node("Resize", ["x", "", "scales"], ["y"], name="downscale", mode="linear", antialias=1)
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (1, 1, 4, 4))],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, (1, 1, 2, 2))],
                                   initializer=[scales])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    runner = OnnxGraph(parse_model(model.SerializeToString()), source="model.onnx")
    with pytest.raises(ValueError) as error:
        runner(torch.zeros(1, 1, 4, 4))
    assert str(error.value) == ("'model.onnx' cannot run here: its Resize node 'downscale' uses a setting not "
                                "implemented (Resize with antialias=1 is not supported)")
