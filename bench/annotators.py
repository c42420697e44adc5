"""Annotator throughput: ours against controlnet-aux 0.0.10 on the same photos, same weights.

    .venv/bin/python -m bench.annotators --repeats 5            # all: ~11 min on 2 quiet cores before LeReS and Zoe, about 25 min with them (estimated)
    .venv/bin/python -m bench.annotators --repeats 1 --photos astronaut --only canny,hed

Both sides get the same photos (scikit-image's astronaut, coffee and chelsea) at the same detect
resolution (512), and each learned pair the same random weights: controlnet-aux's networks are
constructed directly (never from_pretrained; HF_HUB_OFFLINE=1 and network connections refused).
Random weights cost what trained ones cost, except in the data-dependent decoding of OpenPose
and M-LSD, where both sides see the same maps anyway.

controlnet-aux returns its map at `image_resolution` rather than at the input's size; it is
given the photo's short side, so both sides finish with one resize to about the photo's size.

Runs are interleaved: each repeat times ours then theirs (or theirs then ours, alternating)
over all photos, for one annotator after another, so slow drifts of the machine hit both. The
table gives medians over the repeats, in milliseconds per photo, and ours / theirs (< 1: we
are faster). Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before controlnet_aux / huggingface_hub load

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# First on the path: run as a script, this file's folder comes first, and its name would
# shadow the `annotators` package.
sys.path.insert(0, str(REPO_ROOT))

NAMES = ("canny", "content shuffle", "hed", "pidinet", "mlsd", "lineart", "lineart anime",
         "openpose", "midas", "normalbae", "leres", "zoe")  # --only; the learned ones when their modules exist
PHOTOS = ("astronaut", "coffee", "chelsea")  # skimage.data: 512x512, 400x600, 300x451 RGB
DETECT_RESOLUTION = 512                      # v1.1 / controlnet-aux default
CANNY_THRESHOLDS = (100, 200)                # controlnet-aux CannyDetector defaults
SEED = 0

Run = Callable[[np.ndarray], object]


def _refuse_connections(*args: object, **kwargs: object) -> None:
    raise RuntimeError("bench/annotators.py never downloads; something tried to connect")


# --- random weights --------------------------------------------------------------------------------

# He-scaled weights (fan-in), norm scales near 1, small biases, running variances 0.5..1.5: the
# same random weights the annotator tests use.
from tests.annotators.random_learned import adjust, random_state_dict  # noqa: E402


def built(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`make()` without its default initialisation (slow for 100 M weights): built on the meta
    device, then given CPU storage that a strict load fills completely."""
    with torch.device("meta"):
        network = make()
    return network.to_empty(device="cpu")


def same_weights(theirs: Callable[[], torch.nn.Module], ours: Callable[[], torch.nn.Module],
                 seed: int, rename: Callable[[str], str] = lambda key: key
                 ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(their network, our network) holding the same random weights; `rename` maps their key
    names to ours."""
    their_network = built(theirs)
    state = random_state_dict(their_network.state_dict(), seed)
    their_network.load_state_dict(state, strict=True)
    our_network = built(ours)
    our_network.load_state_dict({rename(key): value for key, value in state.items()}, strict=True)
    return their_network.eval(), our_network.eval()


# --- the pairs -------------------------------------------------------------------------------------

def pairs(only: set[str] | None) -> dict[str, tuple[Run, Run]]:
    """annotator -> (ours, theirs), each image -> map at the detect resolution 512."""
    import annotators
    from annotators import openpose as our_openpose

    detect = DETECT_RESOLUTION
    made: dict[str, tuple[Run, Run]] = {}
    # Each pair's lambdas bind their networks as default arguments: `ours` / `theirs` are
    # reassigned by the next pair.

    def wanted(name: str) -> bool:
        return only is None or name in only

    def out_size(image: np.ndarray) -> int:
        return min(image.shape[:2])

    if wanted("canny"):
        from controlnet_aux.canny import CannyDetector
        low, high = CANNY_THRESHOLDS
        made["canny"] = (
            lambda image: annotators.canny(image, low, high, resolution=detect),
            lambda image: CannyDetector()(image, low, high, detect, out_size(image),
                                          output_type="np"))
    if wanted("content shuffle"):
        from controlnet_aux.shuffle import ContentShuffleDetector
        made["content shuffle"] = (
            lambda image: annotators.content_shuffle(image, resolution=detect),
            lambda image: ContentShuffleDetector()(image, detect_resolution=detect,
                                                   image_resolution=out_size(image),
                                                   output_type="np"))
    if wanted("hed"):
        from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector
        theirs, ours = same_weights(ControlNetHED_Apache2, annotators.HEDNetwork, SEED)
        made["hed"] = (lambda image, ours=ours: annotators.hed(image, ours, detect),
                       lambda image, theirs=theirs: HEDdetector(theirs)(image, detect, out_size(image),
                                                         output_type="np"))
    if wanted("pidinet"):
        from controlnet_aux.pidi import PidiNetDetector
        from controlnet_aux.pidi.model import pidinet
        theirs, ours = same_weights(pidinet, annotators.PiDiNetNetwork, SEED + 1)
        made["pidinet"] = (lambda image, ours=ours: annotators.pidinet(image, ours, detect),
                           lambda image, theirs=theirs: PidiNetDetector(theirs)(image, detect, out_size(image),
                                                                 output_type="np"))
    if wanted("mlsd"):
        from controlnet_aux.mlsd import MLSDdetector
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
        theirs, ours = same_weights(MobileV2_MLSD_Large, annotators.MLSDNetwork, SEED + 2)
        made["mlsd"] = (lambda image, ours=ours: annotators.mlsd(image, ours, detect),
                        lambda image, theirs=theirs: MLSDdetector(theirs)(image, detect_resolution=detect,
                                                           image_resolution=out_size(image),
                                                           output_type="np"))
    if wanted("lineart"):
        from controlnet_aux.lineart import Generator, LineartDetector
        theirs, ours = same_weights(lambda: Generator(3, 1, 3), annotators.LineartNetwork,
                                    SEED + 3)
        made["lineart"] = (lambda image, ours=ours: annotators.lineart(image, ours, detect),
                           lambda image, theirs=theirs: LineartDetector(theirs, theirs)(
                               image, detect_resolution=detect, image_resolution=out_size(image),
                               output_type="np"))
    if wanted("lineart anime"):
        from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator
        norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
        theirs, ours = same_weights(
            lambda: UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False),
            annotators.AnimeLineartNetwork, SEED + 4)
        made["lineart anime"] = (lambda image, ours=ours: annotators.lineart_anime(image, ours, detect),
                                 lambda image, theirs=theirs: LineartAnimeDetector(theirs)(
                                     image, detect_resolution=detect,
                                     image_resolution=out_size(image), output_type="np"))
    if wanted("openpose"):
        from controlnet_aux.open_pose import OpenposeDetector
        from controlnet_aux.open_pose.body import Body
        from controlnet_aux.open_pose.model import bodypose_model
        # Theirs nests each conv under its block (model0.conv1_1.weight); the published file,
        # and our network, use the bare Caffe layer names.
        theirs, ours = same_weights(bodypose_model, our_openpose.BodyPoseNetwork, SEED + 5,
                                    rename=lambda key: key.split(".", 1)[1])
        body = Body.__new__(Body)  # Body() would read a file; its model is all it keeps
        body.model = theirs
        networks = our_openpose.OpenPoseNetworks(body=ours)
        made["openpose (body)"] = (
            lambda image: our_openpose.openpose(image, networks, detect),
            lambda image: OpenposeDetector(body)(image, detect, out_size(image),
                                                 include_body=True, include_hand=False,
                                                 include_face=False, output_type="np"))
    if wanted("midas") and _have("annotators.midas"):
        from annotators.midas import MiDaSNetwork, midas_depth
        from controlnet_aux.midas import MidasDetector
        from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel
        theirs, ours = same_weights(
            lambda: DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True),
            MiDaSNetwork, SEED + 6)
        made["midas (depth)"] = (lambda image, ours=ours: midas_depth(image, ours, detect),
                                 lambda image, theirs=theirs: MidasDetector(theirs)(
                                     image, detect_resolution=detect,
                                     image_resolution=out_size(image), output_type="np"))
    if wanted("normalbae") and _have("annotators.normalbae"):
        import types

        from annotators.normalbae import NormalBaeNetwork, normalbae
        from controlnet_aux.normalbae import NormalBaeDetector
        from controlnet_aux.normalbae.nets.NNET import NNET
        # NormalBaeDetector.from_pretrained's arguments (the sampling ratios only matter in
        # training).
        options = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                        sampling_ratio=0.4, importance_ratio=0.7)
        theirs, ours = same_weights(lambda: NNET(options), NormalBaeNetwork, SEED + 7)
        made["normalbae"] = (lambda image, ours=ours: normalbae(image, ours, detect),
                             lambda image, theirs=theirs: NormalBaeDetector(theirs)(
                                 image, detect_resolution=detect,
                                 image_resolution=out_size(image), output_type="np"))
    if wanted("leres") and _have("annotators.leres"):
        from annotators.leres import LeReSNetwork, leres
        from controlnet_aux.leres import LeresDetector
        from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel
        theirs, ours = same_weights(lambda: RelDepthModel(backbone="resnext101"), LeReSNetwork, SEED + 8)
        made["leres"] = (lambda image, ours=ours: leres(image, ours, detect),
                         lambda image, theirs=theirs: LeresDetector(theirs, None)(
                             image, boost=False, detect_resolution=detect, image_resolution=out_size(image),
                             output_type="np"))
    if wanted("zoe") and _have("annotators.zoe"):
        from annotators.zoe import ZoeDepthNetwork, zoe_depth
        from controlnet_aux.zoe import ZoeDetector
        from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
        from controlnet_aux.zoe.zoedepth.utils.config import get_config
        # ZoeDetector.from_pretrained's model (its MiDaS core built without a download), the
        # published widths; ours also holds the BEiT blocks' relative_position_index buffers,
        # which the file has and nothing reads.
        their_network = built(lambda: ZoeDepth.build_from_config(get_config("zoedepth", "infer")))
        state = adjust("zoe", random_state_dict(their_network.state_dict(), SEED + 9))
        torch.nn.Module.load_state_dict(their_network, state, strict=True)  # not ZoeDepth's non-strict override
        our_network = built(ZoeDepthNetwork)
        unread = our_network.load_state_dict(state, strict=False)
        assert not unread.unexpected_keys and all("relative_position_index" in key for key in unread.missing_keys)
        made["zoe"] = (lambda image, ours=our_network.eval(): zoe_depth(image, ours, detect),
                       lambda image, theirs=their_network.eval(): ZoeDetector(theirs)(
                           image, detect_resolution=detect, image_resolution=out_size(image), output_type="np"))
    return made


def _have(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


# --- timing --------------------------------------------------------------------------------------

# wall: what a user waits (the table's default). cpu: this process's CPU seconds, all threads
# summed, which other processes on a busy machine disturb much less (compare with --threads 1).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_pass(run: Run, photos: list[np.ndarray], clock: Callable[[], float]) -> float:
    """Seconds per photo for one pass over all photos."""
    start = clock()
    for photo in photos:
        run(photo)
    return (clock() - start) / len(photos)


def measure(made: dict[str, tuple[Run, Run]], photos: list[np.ndarray], repeats: int,
            warmup: int, clock: Callable[[], float] = time.perf_counter
            ) -> dict[str, tuple[list[float], list[float]]]:
    """annotator -> (our seconds per photo, theirs), one entry per repeat, interleaved."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in made}
    for name, (ours, theirs) in made.items():
        for _ in range(warmup):
            time_pass(ours, photos, clock)
            time_pass(theirs, photos, clock)
    for repeat in range(repeats):
        for name, (ours, theirs) in made.items():
            order = ((0, ours), (1, theirs)) if repeat % 2 == 0 else ((1, theirs), (0, ours))
            for side, run in order:
                times[name][side].append(time_pass(run, photos, clock))
        print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    return times


def table(times: dict[str, tuple[list[float], list[float]]]) -> str:
    lines = ["| annotator | ours (ms / photo) | controlnet-aux 0.0.10 (ms / photo) | ours / theirs |",
             "|---|---:|---:|---:|"]
    for name, (ours, theirs) in times.items():
        our_median, their_median = statistics.median(ours), statistics.median(theirs)
        lines.append(f"| {name} | {1000 * our_median:.1f} | {1000 * their_median:.1f} | "
                     f"{our_median / their_median:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.annotators",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per side (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per side first")
    parser.add_argument("--photos", default=",".join(PHOTOS),
                        help="skimage.data photo names, comma separated")
    parser.add_argument("--only", default="",
                        help=f"comma-separated subset of: {', '.join(NAMES)}")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall (default) or cpu: process CPU time, steadier on a busy machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    socket.socket.connect = _refuse_connections  # type: ignore[method-assign]
    warnings.filterwarnings("ignore")  # controlnet-aux / timm deprecation chatter

    from skimage import data

    photos = [getattr(data, name.strip())() for name in args.photos.split(",")]
    only = {name.strip() for name in args.only.split(",") if name.strip()} or None
    if only and not only <= set(NAMES):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(NAMES)))}; choose from "
                     f"{', '.join(NAMES)}")
    made = pairs(only)
    times = measure(made, photos, args.repeats, args.warmup, CLOCKS[args.clock])
    from importlib.metadata import version

    print(f"\n{len(photos)} photos ({args.photos}), detect resolution {DETECT_RESOLUTION}, "
          f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up, "
          f"{args.clock} clock; "
          f"torch {torch.__version__} on {torch.get_num_threads()} CPU threads, "
          f"{platform.machine()} {os.cpu_count()} cores, "
          f"controlnet-aux {version('controlnet-aux')}\n")
    print(table(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
