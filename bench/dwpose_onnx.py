"""DWPose's two networks run from their ONNX files: our graph runner (annotators/onnx_graph.py)
against onnxruntime and against our torch networks, on the same random full-size weights.

    .venv/bin/python -m bench.dwpose_onnx --repeats 5            # CPU, fp32: about 1.5 min on 2 cores
    .venv/bin/python -m bench.dwpose_onnx --device cuda --dtype fp16

The files are written as DWPose's are (workflows.random_models: YOLOX-L in Megvii's export layout
on 640 x 640, RTMPose-l on 288 x 384 crops; torch's exporter at opset 11, BatchNorm folded), into
a temporary folder. Per network, each repeat times every configuration once, in an order rotated
from repeat to repeat; the table gives medians:

- `torch network, NCHW`: the module that was exported (what the .pth checkpoints load into);
- `torch network`: that module as `load_dwpose` places it (channels-last weights on the devices in
  onnx_graph.CHANNELS_LAST_DEVICES);
- `graph, NCHW`: OnnxGraph with convolutions in the layout they are given;
- `graph`: OnnxGraph as it runs in the pack (channels-last convolutions on the devices in
  onnx_graph.CHANNELS_LAST_DEVICES);
- `onnxruntime`: its CPU provider with as many threads as torch (CPU only; what
  comfyui_controlnet_aux runs the files with).

Random weights cost what trained ones cost here: nothing is decoded. Benchmarks are not tests:
nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from .sampling import DTYPES, synchronize

DETECTOR_SEED, POSE_SEED = 1, 2
PIXEL_MAX = 255.0  # YOLOX takes 0..255 pixels; RTMPose normalised crops

Run = Callable[[], object]


def configurations(file_name: str, folder: Path, people: int, device: str, dtype: torch.dtype
                   ) -> dict[str, Run]:
    """Configuration name -> one forward pass of the network `file_name` holds."""
    from annotators import dwpose, onnx_graph
    from annotators.onnx_file import load_onnx
    from workflows.random_models import random_dwpose_network, save_onnx

    detector = file_name == dwpose.DETECTOR_ONNX
    seed = DETECTOR_SEED if detector else POSE_SEED
    network, input_shape, batch_axis = random_dwpose_network(file_name, seed)
    path = save_onnx(network, input_shape, folder / file_name, batch_axis)
    generator = torch.Generator().manual_seed(seed)
    if detector:  # one letterboxed image
        inputs = torch.rand(input_shape, generator=generator) * PIXEL_MAX
    else:  # `people` normalised crops
        inputs = torch.randn((people, *input_shape[1:]), generator=generator)
    inputs = inputs.to(device, dtype)
    network = network.to(device, dtype)
    graph = onnx_graph.OnnxGraph(load_onnx(str(path)), source=file_name).to(device, dtype).eval()

    def graph_in_layout_given() -> object:
        shipped, onnx_graph.CHANNELS_LAST_DEVICES = onnx_graph.CHANNELS_LAST_DEVICES, ()
        try:
            return graph(inputs)
        finally:
            onnx_graph.CHANNELS_LAST_DEVICES = shipped

    placed = dwpose.placed_network(copy.deepcopy(network), device, dtype)  # as load_dwpose places a checkpoint's network
    runs: dict[str, Run] = {"torch network, NCHW": lambda: network(inputs), "torch network": lambda: placed(inputs),
                            "graph, NCHW": graph_in_layout_given, "graph": lambda: graph(inputs)}
    if device == "cpu" and dtype == torch.float32 and importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: inputs.numpy()}
        runs["onnxruntime"] = lambda: session.run(None, feed)
    return runs


def measure(runs: dict[str, Run], repeats: int, warmup: int, device: str) -> dict[str, list[float]]:
    """Configuration -> seconds per forward pass, one per repeat, the order rotated each repeat."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:
            for _ in range(warmup):
                runs[name]()
        for repeat in range(repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                synchronize(device)
                start = time.perf_counter()
                runs[name]()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return times


def table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = ["| network | configuration | seconds (median) | / graph | / onnxruntime |", "|---|---|---:|---:|---:|"]
    for network, times in results.items():
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in medians.items():
            runtime = f"{seconds / medians['onnxruntime']:.2f}" if "onnxruntime" in medians else "–"
            lines.append(f"| {network} | {name} | {seconds:.3f} | {seconds / medians['graph']:.2f} | {runtime} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dwpose_onnx", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per configuration (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per configuration first")
    parser.add_argument("--people", type=int, default=5, help="crops in the pose network's batch")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # the exporter's tracing notices
    from annotators.dwpose import DETECTOR_ONNX, POSE_ONNX

    results = {}
    with tempfile.TemporaryDirectory(prefix="dwpose_onnx_") as folder:
        crops = f"{args.people} crop" + ("" if args.people == 1 else "s")
        for file_name, label in ((DETECTOR_ONNX, "YOLOX-L, 1 image"), (POSE_ONNX, f"RTMPose-l, {crops}")):
            runs = configurations(file_name, Path(folder), args.people, args.device, DTYPES[args.dtype])
            results[label] = measure(runs, args.repeats, args.warmup, args.device)
            print(f"{label} done", file=sys.stderr, flush=True)
    hardware = (torch.cuda.get_device_name() if args.device == "cuda"
                else f"{torch.get_num_threads()} CPU threads, {platform.machine()} {os.cpu_count()} cores")
    print(f"\nDWPose's ONNX files (random weights, full size), {args.dtype} on {hardware}, torch {torch.__version__}; "
          f"median of {args.repeats} rotated repeats after {args.warmup} warm-up\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
