"""`load_state_dict(path, opaque_objects=True)`: training checkpoints whose metadata pickles
Python objects (OpenMMLab's: mmengine's HistoryBuffer, numpy arrays) give their tensors, and
nothing the file names is imported or run."""

from __future__ import annotations

import pathlib
from collections import OrderedDict

import numpy as np
import pytest
import torch

from annotators.weights import BadWeightsError, load_state_dict


def weights() -> OrderedDict:
    generator = torch.Generator().manual_seed(0)
    return OrderedDict((name, torch.randn(shape, generator=generator))
                       for name, shape in (("backbone.stem.0.conv.weight", (4, 3, 3, 3)), ("head.cls_x.weight", (6, 4))))


def mmengine_checkpoint(path: pathlib.Path) -> OrderedDict:
    """A file laid out as mmengine's CheckpointHook saves one (meta, state_dict, message_hub,
    optimizer), with the object types those entries hold."""
    history_buffer = pytest.importorskip("mmengine.logging.history_buffer")
    state_dict = weights()
    torch.save({
        "meta": {"mmengine_version": "0.10.7", "epoch": 270,
                 "dataset_meta": {"sigmas": np.linspace(0.01, 0.1, 7), "flip_indices": [0, 2, 1]}},
        "state_dict": state_dict,
        "message_hub": {"log_scalars": {"train/loss": history_buffer.HistoryBuffer([1.0, 0.5], [1, 1])}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 4e-3}]},
    }, path)
    return state_dict


def test_refused_by_default(tmp_path):
    path = tmp_path / "dw-ll_ucoco_384.pth"
    mmengine_checkpoint(path)
    with pytest.raises(BadWeightsError, match="contains pickled Python objects other than tensors"):
        load_state_dict(str(path))


def test_tensors_read_with_opaque_objects(tmp_path):
    path = tmp_path / "dw-ll_ucoco_384.pth"
    expected = mmengine_checkpoint(path)
    loaded = load_state_dict(str(path), opaque_objects=True)
    assert list(loaded) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor)


def leave_marker(path: str) -> None:
    pathlib.Path(path).touch()


class Hostile:
    """Pickles as a call that creates a file when the checkpoint is unpickled normally: to a
    function by name, or through getattr on a class."""

    def __init__(self, marker: pathlib.Path, through_getattr: bool) -> None:
        self.marker, self.through_getattr = marker, through_getattr

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,)) if self.through_getattr else (leave_marker, (str(self.marker),))


def hostile_checkpoint(tmp_path: pathlib.Path, through_getattr: bool) -> tuple[pathlib.Path, pathlib.Path]:
    marker, path = tmp_path / "ran", tmp_path / "hostile.pth"
    torch.save({"state_dict": weights(), "extra": Hostile(marker, through_getattr)}, path)
    torch.load(path, weights_only=False)  # the file is really hostile: a plain load runs the call
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_named_function_is_read_as_an_inert_object(tmp_path):
    path, marker = hostile_checkpoint(tmp_path, through_getattr=False)
    loaded = load_state_dict(str(path), opaque_objects=True)
    assert not marker.exists()
    assert list(loaded) == list(weights())


def test_call_through_getattr_is_refused_without_running(tmp_path):
    path, marker = hostile_checkpoint(tmp_path, through_getattr=True)
    with pytest.raises(BadWeightsError, match="contains pickled Python objects other than tensors"):
        load_state_dict(str(path), opaque_objects=True)
    assert not marker.exists()
