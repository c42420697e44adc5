"""DSINE against an oracle written out here, with identical random weights.

No DSINE package exists on the package index, so the oracle is built from other parts:
  * the encoder is timm's tf_efficientnet_b5 (an independent port of the same TensorFlow
    network, with its own "SAME" padding), given our encoder's weights;
  * the decoder and the heads are functional torch in float64, read straight from the state
    dict (weight standardisation in numpy);
  * the geometry is numpy in float64, written from the original repository's code
    (baegwangbin/DSINE models/dsine.py, models/submodules.py, utils/utils.py, utils/rotation.py,
    hubconf.py). It uses a different formulation where one exists: neighbours are gathered by
    clipped indices, not unfold; rotations go through quaternions to matrices, as the
    original's PyTorch3D functions do, where ours uses Rodrigues' formula on the vectors; the
    upsampling is one einsum.
The pipeline oracle is hubconf.py's Predictor.infer_pil (centred zero padding to 32, intrinsics
from the field of view over the unpadded size, shifted by the padding), followed by
comfyui_controlnet_aux's (n + 1) / 2 * 255 map.

Random weights: random_learned's He-scaled state dict; the EfficientNet's BatchNorms are
calibrated on photos (as test_normalbae.py, whose reasons hold here: without it 39 residual
blocks blow the activations up). Each comparison checks its normals are not flat.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

timm = pytest.importorskip("timm")

from annotators.dsine import (DSINE_WEIGHTS, DsineNetwork, camera_from_fov, dsine,  # noqa: E402
                              load_dsine, ray_relu, rotate)
from annotators.image import resize_for_detection  # noqa: E402

from .parity import assert_levels_within_rounding  # noqa: E402
from .random_learned import (assert_loaded, calibrate_batch_norms, random_state_dict,  # noqa: E402
                             run_in_a_fresh_interpreter, template_of)

SEED = 11
# Unit normals, per component: our network in float64 equals the oracle within EXACT_TOLERANCE
# (the same sums in another order); in float32, within FLOAT32_TOLERANCE (measured: 4e-4 at
# most, 2e-5 on average).
EXACT_TOLERANCE = 1e-9
FLOAT32_TOLERANCE = 1e-3
# Raw tolerance for the uint8 maps of the float32 network (parity.py: at most one level, on at
# most 2 x this x 255 of the pixels).
MAP_TOLERANCE = 1e-4
MIN_NORMAL_STD = 0.05  # a flat prediction would match anything; photos spread the normals

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])  # torchvision's, as hubconf.py's Normalize
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
ENCODER_PREFIX = "encoder.original_model."

# The original's constants (models/dsine.py, submodules.py), written out again.
PATCH = 5            # ps
DOWNSAMPLE = 8       # downsample_ratio
RAY_EPS = 1e-2       # RayReLU(eps=1e-2)
WS_EPS = 1e-5        # Conv2d_WS
GROUPS = 8           # nn.GroupNorm(8, ...)
PAD_MULTIPLE = 32    # utils.pad_input
NORMAL_ALONG_RAY_BIAS = 3.0  # added to the normal head's z bias (see `networks`)
SMALL_ANGLE_BIAS = -2.0      # added to the angle head's biases: sigmoid(-2) x pi ~ 0.4 rad

PHOTO_128 = cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
PHOTO_256 = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
# Non-square, already a multiple of 32 and 64: no padding, no resizing.
CAT = cv2.resize(data.chelsea()[:, :450], (192, 128), interpolation=cv2.INTER_AREA)
# Not a multiple of 32 either way: padded 14 / 14 rows and 5 / 5 columns.
ODD = cv2.resize(data.chelsea(), (150, 100), interpolation=cv2.INTER_AREA)


def normalized(rgb: np.ndarray) -> np.ndarray:
    return (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def batch(image_hwc: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image_hwc.transpose(2, 0, 1))).to(dtype)[None]


# --- the oracle -------------------------------------------------------------------------------

def unit(v: np.ndarray, axis: int = 0) -> np.ndarray:
    """F.normalize: v / max(|v|, 1e-12)."""
    return v / np.maximum(np.linalg.norm(v, axis=axis, keepdims=True), 1e-12)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def gather_neighbours(a: np.ndarray, size: int) -> np.ndarray:
    """CxHxW -> CxKxHxW, K = size^2 offsets row by row, indices clipped at the border."""
    radius, (height, width) = size // 2, a.shape[1:]
    rows, cols = np.arange(height), np.arange(width)
    return np.stack([a[:, np.clip(rows + dy, 0, height - 1)][:, :, np.clip(cols + dx, 0, width - 1)]
                     for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)], axis=1)


def quaternion_matrices(axis_angle: np.ndarray) -> np.ndarray:
    """3x... rotation vectors -> 3x3x... matrices, via quaternions (PyTorch3D's
    axis_angle_to_quaternion and quaternion_to_matrix, small-angle series included)."""
    angles = np.linalg.norm(axis_angle, axis=0)
    small = np.abs(angles) < 1e-6
    safe = np.where(small, 1.0, angles)
    sin_half_over = np.where(small, 0.5 - angles * angles / 48, np.sin(safe / 2) / safe)
    r, i, j, k = np.cos(angles / 2), *(axis_angle * sin_half_over)
    two_s = 2.0 / (r * r + i * i + j * j + k * k)
    return np.array([
        [1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r)],
        [two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r)],
        [two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j)]])


def oracle_ray_relu(normal: np.ndarray, ray: np.ndarray) -> np.ndarray:
    """RayReLU.forward along axis 0 (cosine_similarity's eps 1e-8 on the norms' product)."""
    cos = (normal * ray).sum(0) / np.maximum(
        np.linalg.norm(normal, axis=0) * np.linalg.norm(ray, axis=0), 1e-8)
    along_view = ray * cos
    along_view_relu = ray * (np.maximum(cos - RAY_EPS, 0.0) + RAY_EPS)
    return unit(normal + along_view_relu - along_view)


def oracle_convex_upsampling(coarse: np.ndarray, logits: np.ndarray, k: int) -> np.ndarray:
    """CxHxW -> Cx(kH)x(kW): fine pixel (kh + a, kw + b) = sum over the 3x3 neighbours n of
    softmax_n(logits[n, a, b]) x coarse at n."""
    channels, height, width = coarse.shape
    logits = logits.reshape(9, k, k, height, width)
    weights = np.exp(logits - logits.max(0))
    weights /= weights.sum(0)
    fine = np.einsum("nabhw,cnhw->chawb", weights, gather_neighbours(coarse, 3))
    return fine.reshape(channels, height * k, width * k)


class Oracle:
    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.w = {key: value.double() for key, value in state_dict.items()}
        self.encoder = timm.create_model("tf_efficientnet_b5", pretrained=False).double().eval()
        missing, unexpected = self.encoder.load_state_dict(
            {key[len(ENCODER_PREFIX):]: value for key, value in self.w.items()
             if key.startswith(ENCODER_PREFIX)}, strict=False)
        assert set(missing) == {"classifier.weight", "classifier.bias"} and not unexpected

    def conv(self, x: torch.Tensor, name: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.w[f"{name}.weight"] if weight is None else weight
        return F.conv2d(x, weight, self.w[f"{name}.bias"], padding=weight.shape[-1] // 2)

    def head(self, x: torch.Tensor, name: str) -> torch.Tensor:
        x = torch.relu(self.conv(x, f"{name}.0"))
        return self.conv(torch.relu(self.conv(x, f"{name}.2")), f"{name}.4")

    def up(self, x: torch.Tensor, skip: torch.Tensor, name: str) -> torch.Tensor:
        x = torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False),
                       skip], dim=1)
        for conv, norm in ((0, 1), (3, 4)):
            w = self.w[f"{name}._net.{conv}.weight"].numpy()
            rows = w.reshape(len(w), -1)
            standardized = (rows - rows.mean(1, keepdims=True)) / (rows.std(1, ddof=1, keepdims=True) + WS_EPS)
            x = self.conv(x, f"{name}._net.{conv}", torch.from_numpy(standardized.reshape(w.shape)))
            x = F.group_norm(x, GROUPS, self.w[f"{name}._net.{norm}.weight"], self.w[f"{name}._net.{norm}.bias"])
            x = F.leaky_relu(x, 0.01)
        return x

    def gru(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z, r = torch.sigmoid(self.conv(hx, "gru.convz")), torch.sigmoid(self.conv(hx, "gru.convr"))
        q = torch.tanh(self.conv(torch.cat([r * h, x], dim=1), "gru.convq"))
        return (1 - z) * h + z * q

    def __call__(self, image: torch.Tensor, intrinsics: tuple[float, float, float, float],
                 iterations: int) -> np.ndarray:
        """1x3xHxW float64 input, (fu, fv, cu, cv) as the model's forward has them after adding
        0.5 -> 3xHxW unit normals."""
        _, _, height, width = image.shape
        with torch.no_grad():
            m = self.encoder
            x = m.bn1(m.conv_stem(image))
            stages = []
            for stage in m.blocks:
                x = stage(x)
                stages.append(x)
            block2, block3, block4 = stages[2], stages[4], m.conv_head(x)

            def uv(stride: int) -> torch.Tensor:  # get_ray(return_uv=True)
                h, w = height // stride, width // stride
                fu, fv, cu, cv = (value * scale for value, scale in
                                  zip(intrinsics, (w / width, h / height, w / width, h / height)))
                xs, ys = (np.arange(w) + 0.5 - cu) / fu, (np.arange(h) + 0.5 - cv) / fv
                return torch.from_numpy(np.stack(np.broadcast_arrays(xs[None, :], ys[:, None])))[None]

            uv_32, uv_16, uv_8 = uv(32), uv(16), uv(8)
            ray_8 = unit(np.concatenate([uv_8[0].numpy(), np.ones((1,) + uv_8.shape[-2:])]))
            x = self.conv(torch.cat([block4, uv_32], dim=1), "decoder.conv2")
            x = self.up(x, torch.cat([block3, uv_16], dim=1), "decoder.up1")
            x = self.up(x, torch.cat([block2, uv_8], dim=1), "decoder.up2")
            x = torch.cat([x, uv_8], dim=1)
            normal = oracle_ray_relu(unit(self.head(x, "decoder.normal_head")[0].numpy()), ray_8)
            features = torch.cat([self.head(x, "decoder.feature_head"), uv_8], dim=1)
            h = self.head(x, "decoder.hidden_head")
            coarse_h, coarse_w = normal.shape[1:]
            fu, fv, cu, cv = (value * scale for value, scale in zip(
                intrinsics, (coarse_w / width, coarse_h / height, coarse_w / width, coarse_h / height)))
            ys, xs = np.meshgrid(np.arange(coarse_h) + 0.5, np.arange(coarse_w) + 0.5, indexing="ij")
            pixel = gather_neighbours(np.stack([xs, ys]), PATCH)
            for _ in range(iterations):
                h = self.gru(h, features)
                read = torch.cat([h, uv_8], dim=1)
                prob = sigmoid(self.head(read, "prob_head")[0].numpy())
                xy = self.head(read, "xy_head")[0].numpy()
                direction = unit(np.stack([xy[:PATCH ** 2], xy[PATCH ** 2:]]))
                angle = sigmoid(self.head(read, "angle_head")[0].numpy()) * np.pi
                nb = gather_neighbours(normal, PATCH)
                du_over_fu, dv_over_fv = direction[0] / fu, direction[1] / fv
                term_u = (pixel[0] + direction[0] - cu) / fu
                term_v = (pixel[1] + direction[1] - cv) / fv
                denominator = term_u * nb[0] + term_v * nb[1] + nb[2]
                tiny = np.abs(denominator) < 1e-8
                denominator[tiny] = 1e-8 * np.sign(denominator[tiny])
                with np.errstate(divide="ignore", invalid="ignore"):
                    delta_z = -(du_over_fu * nb[0] + dv_over_fv * nb[1]) / denominator
                    axes = unit(np.stack([du_over_fu + delta_z * term_u, dv_over_fv + delta_z * term_v,
                                          delta_z]))
                axes[:, ~np.isfinite(axes).all(0)] = 0.0
                rotated = unit(np.einsum("ij...,j...->i...", quaternion_matrices(axes * angle), nb))
                rotated = oracle_ray_relu(rotated, ray_8[:, None])
                normal = unit((prob[None] * rotated).sum(1))
            logits = self.head(torch.cat([h, uv_8], dim=1), "up_prob_head")[0].numpy()
            return unit(oracle_convex_upsampling(normal, logits, DOWNSAMPLE))


def hubconf_intrinsics(height: int, width: int, fov: float, left: int, top: int
                       ) -> tuple[float, float, float, float]:
    """utils.get_intrins_from_fov over the unpadded size, + the padding (hubconf), + 0.5 (the
    model's forward)."""
    focal = (max(height, width) / 2.0) / np.tan(np.deg2rad(fov / 2.0))
    return focal, focal, width / 2.0 - 0.5 + left + 0.5, height / 2.0 - 0.5 + top + 0.5


def hubconf_padding(size: int) -> tuple[int, int]:
    """utils.pad_input for one side: (before, after)."""
    if size % PAD_MULTIPLE == 0:
        return 0, 0
    new = PAD_MULTIPLE * (size // PAD_MULTIPLE + 1)
    return (new - size) // 2, new - size - (new - size) // 2


def oracle_map(oracle: Oracle, rgb: np.ndarray, fov: float, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """(normals, uint8 map) of hubconf's infer_pil at the image's own size."""
    height, width = rgb.shape[:2]
    (top, bottom), (left, right) = hubconf_padding(height), hubconf_padding(width)
    padded = np.pad(rgb / 255.0, ((top, bottom), (left, right), (0, 0)))
    image = batch((padded - IMAGENET_MEAN) / IMAGENET_STD, torch.float64)
    normals = oracle(image, hubconf_intrinsics(height, width, fov, left, top), iterations)
    normals = normals[:, top:top + height, left:left + width]
    return normals, (((normals + 1) * 0.5).clip(0, 1) * 255.0).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def networks() -> tuple[Oracle, DsineNetwork, DsineNetwork]:
    """(oracle, our network, our network in float64), holding the same random weights."""
    weights = random_state_dict(template_of(DsineNetwork), SEED)
    # Like a trained network's, the first normals lie along the viewing rays and the refinement
    # turns them by small angles. Plain random heads give normals at random, half of them
    # facing away and clamped by the ray ReLU to a grazing cosine of 0.01. Their neighbours'
    # tangent axes then come from a near-zero denominator, and float32 rounding moves them by up
    # to 0.03, where float64 agrees with the oracle all the same.
    weights["decoder.normal_head.4.bias"][2] += NORMAL_ALONG_RAY_BIAS
    weights["angle_head.4.bias"] += SMALL_ANGLE_BIAS
    ours = DsineNetwork().eval()
    ours.load_state_dict(weights, strict=True)
    calibration = torch.cat([batch(normalized(image), torch.float32)
                             for image in (PHOTO_128, CAT[:, :128], CAT[:, -128:])])
    calibrate_batch_norms(ours.encoder, calibration, seed=SEED + 1)
    return Oracle(ours.state_dict()), ours, copy.deepcopy(ours).double()


def assert_not_flat(normals: np.ndarray) -> None:
    spread = normals.reshape(3, -1).std(axis=1)
    assert (spread > MIN_NORMAL_STD).all(), spread


# --- the network ------------------------------------------------------------------------------

NETWORK_CASES = {
    # (image, fov, iterations, left, top): the network input is the image as it is
    "five steps": (CAT, 60.0, 5, 0, 0),
    "no refinement": (CAT, 60.0, 0, 0, 0),
    # a camera off the input's centre, as for a padded image, and a wider lens
    "off-centre camera": (PHOTO_128, 100.0, 2, 7, 3),
}


@pytest.mark.parametrize("case", list(NETWORK_CASES))
def test_network_equals_oracle(networks, case):
    oracle, ours, ours_float64 = networks
    image, fov, iterations, left, top = NETWORK_CASES[case]
    height, width = image.shape[:2]
    camera_size = (height - 2 * top, width - 2 * left)
    x = normalized(image)
    expected = oracle(batch(x, torch.float64), hubconf_intrinsics(*camera_size, fov, left, top), iterations)
    assert expected.shape == (3, height, width)
    assert_not_flat(expected)
    camera = camera_from_fov(*camera_size, fov, left, top)
    for network, dtype, tolerance in ((ours_float64, torch.float64, EXACT_TOLERANCE),
                                      (ours, torch.float32, FLOAT32_TOLERANCE)):
        with torch.no_grad():
            got = network(batch(x, dtype), camera, iterations)[0].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance, err_msg=str(dtype))


def test_refinement_changes_the_prediction(networks):
    # Otherwise the oracle comparisons above could not tell one step count from another.
    ours = networks[1]
    x, camera = batch(normalized(CAT), torch.float32), camera_from_fov(128, 192, 60.0)
    with torch.no_grad():
        steps = [ours(x, camera, iterations) for iterations in (0, 1, 5)]
    for a, b in zip(steps, steps[1:]):
        assert float((a - b).abs().max()) > 0.1


# --- the pipeline -----------------------------------------------------------------------------

def test_odd_size_map_equals_the_original_predictor(networks):
    # Centred zero padding (14 / 14 rows, 5 / 5 columns), the camera shifted by it, cropped back.
    oracle, ours, _ = networks
    normals, expected = oracle_map(oracle, ODD, fov=75.0, iterations=3)
    assert_not_flat(normals)
    got = dsine(ODD, ours, resolution=None, fov=75.0, iterations=3)
    assert got.shape == ODD.shape and got.dtype == np.uint8
    assert_levels_within_rounding(got, expected, MAP_TOLERANCE)


def test_resized_map_uses_the_camera_of_the_detect_size(networks):
    # The network sees the photo at 128 x 128, so its camera is that image's: the original
    # predictor on the resized photo, brought back to 256 as every map is. (comfyui_controlnet_aux
    # would take the intrinsics from the 256 x 256 photo instead.)
    oracle, ours, _ = networks
    detected = resize_for_detection(PHOTO_256, 128)
    normals, expected = oracle_map(oracle, detected, fov=60.0, iterations=5)
    assert_not_flat(normals)
    expected = cv2.resize(expected, (256, 256), interpolation=cv2.INTER_LINEAR)
    got = dsine(PHOTO_256, ours, resolution=128)
    assert_levels_within_rounding(got, expected, MAP_TOLERANCE)


@pytest.mark.parametrize("fov", [0.0, -10.0, 180.0, 365.0])
def test_field_of_view_outside_0_to_179_degrees_is_refused(networks, fov):
    with pytest.raises(ValueError, match=f"^fov must be between 0 and 179 degrees, got {fov:g}$"):
        dsine(CAT, networks[1], resolution=None, fov=fov)


def test_negative_iterations_are_refused(networks):
    with pytest.raises(ValueError, match="^iterations must be 0 or more, got -1$"):
        dsine(CAT, networks[1], resolution=None, iterations=-1)


# --- pieces with exact properties -------------------------------------------------------------

def test_rotation_by_a_zero_vector_is_the_identity_and_others_match_the_matrices():
    generator = torch.Generator().manual_seed(SEED)
    vectors = torch.randn(2, 3, 7, generator=generator, dtype=torch.float64)
    rotations = torch.randn(2, 3, 7, generator=generator, dtype=torch.float64)
    rotations[0, :, 0] = 0.0
    assert torch.equal(rotate(vectors, rotations)[0, :, 0], vectors[0, :, 0])
    expected = np.einsum("ijbn,bjn->bin", quaternion_matrices(rotations.permute(1, 0, 2).numpy()),
                         vectors.numpy())
    np.testing.assert_allclose(rotate(vectors, rotations).numpy(), expected, atol=1e-12)


def test_ray_relu_keeps_normals_facing_the_camera_and_tilts_the_others():
    ray = F.normalize(torch.tensor([[0.2], [-0.1], [1.0]], dtype=torch.float64), dim=0)[None, :, :, None]
    facing = F.normalize(torch.tensor([[0.3], [0.1], [0.9]], dtype=torch.float64), dim=0)[None, :, :, None]
    away = -facing
    torch.testing.assert_close(ray_relu(facing, ray), facing, rtol=0, atol=1e-15)
    tilted = ray_relu(away, ray)
    # its component along the ray raised to RAY_EPS, then renormalised: the cosine ends above
    assert RAY_EPS < float((tilted * ray).sum()) < 0.1
    np.testing.assert_allclose(tilted[0, :, :, 0].numpy(),
                               oracle_ray_relu(away[0, :, :, 0].numpy(), ray[0, :, :, 0].numpy()), atol=1e-12)


# --- loading the published file ---------------------------------------------------------------

def test_loader_reads_the_published_checkpoint(tmp_path, networks):
    # DSINE's training saves {"model": <DataParallel state dict>}; hubconf.py loads ["model"]
    # strictly into the same module names.
    weights = networks[1].state_dict()
    torch.save({"model": {f"module.{key}": value for key, value in weights.items()}},
               tmp_path / DSINE_WEIGHTS)
    assert_loaded(load_dsine([str(tmp_path)]), weights)


def test_loader_is_strict(tmp_path):
    weights = template_of(DsineNetwork)
    torch.save({key: torch.zeros(value.shape) for key, value in weights.items()
                if not key.startswith("up_prob_head.")}, tmp_path / DSINE_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "up_prob_head\.0\.weight"'):
        load_dsine([str(tmp_path)])


def test_runs_without_timm_or_controlnet_aux():
    code = (
        "import sys, numpy as np\n"
        "from annotators.dsine import DsineNetwork, dsine\n"
        "dsine(np.zeros((40, 50, 3), np.uint8), DsineNetwork().eval(), resolution=None, iterations=1)\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "bad = sorted(loaded & {'geffnet', 'timm', 'controlnet_aux', 'custom_controlnet_aux'})\n"
        "assert not bad, bad\n")
    run_in_a_fresh_interpreter(code)
