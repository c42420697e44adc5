"""Line-like annotators against direct OpenCV calls and independent re-derivations."""

import cv2
import numpy as np
import pytest
from skimage import data

from annotators import (binary, canny, hough_lines, hough_segments, median_thresholds, scribble,
                        xdog_scribble)


def three(channel: np.ndarray) -> np.ndarray:
    return np.stack([channel] * 3, axis=2)


def gray(rgb: np.ndarray) -> np.ndarray:
    """The annotators' gray level is OpenCV's RGB -> gray (its fixed-point rounding differs
    between OpenCV versions, so it is not re-derived here)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


# --- Canny -------------------------------------------------------------------------------------

@pytest.mark.parametrize("photo, low, high", [(data.astronaut(), 100, 200),
                                              (data.coffee(), 50, 150),
                                              (data.chelsea(), 20, 60)])
def test_canny_equals_cv2_canny(photo, low, high):
    np.testing.assert_array_equal(canny(photo, low, high, resolution=None),
                                  three(cv2.Canny(photo, low, high)))


def test_canny_at_detect_resolution_is_resize_canny_resize_back():
    photo = data.astronaut()[::2, ::2]  # 256x256 -> detected at 512x512, brought back nearest
    big = cv2.resize(photo, (512, 512), interpolation=cv2.INTER_LANCZOS4)
    expected = cv2.resize(cv2.Canny(big, 100, 200), (256, 256), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(canny(photo, resolution=512), three(expected))


def test_canny_median_rule():
    gray = data.camera()  # equal channels, so the gray conversion is the identity
    median = float(np.median(gray))
    low, high = round(0.67 * median), min(255, round(1.33 * median))
    out = canny(three(gray), auto_thresholds=True, resolution=None)
    np.testing.assert_array_equal(out, three(cv2.Canny(three(gray), low, high)))
    assert not np.array_equal(out, canny(three(gray), resolution=None))  # the rule did something


def test_median_rule_by_hand():
    # median 100 -> (0.67 * 100, 1.33 * 100) = (67, 133); median 200 -> high capped at 255
    page = np.repeat(np.array([90, 100, 110], np.uint8), 3).reshape(3, 3)
    assert median_thresholds(three(page)) == (67, 133)
    assert median_thresholds(three(page + 100)) == (134, 255)


def test_canny_threshold_order_is_checked():
    with pytest.raises(ValueError, match=r"^canny low_threshold \(200\) is above high_threshold "
                                         r"\(100\); swap them$"):
        canny(data.astronaut(), 200, 100)


# --- Hough -------------------------------------------------------------------------------------

def lines_picture() -> np.ndarray:
    picture = np.zeros((200, 240, 3), np.uint8)
    cv2.line(picture, (20, 50), (220, 50), (255, 255, 255), 3)     # horizontal
    cv2.line(picture, (120, 70), (120, 190), (255, 255, 255), 3)   # vertical
    cv2.line(picture, (20, 80), (100, 180), (255, 255, 255), 3)    # diagonal
    return picture


def distance_to_segments(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Euclidean distance of each (x, y) point to the nearest segment."""
    p = points[:, None, :].astype(np.float64)
    a = segments[None, :, 0:2].astype(np.float64)
    b = segments[None, :, 2:4].astype(np.float64)
    ab = b - a
    t = np.clip(np.sum((p - a) * ab, axis=2) / np.maximum(np.sum(ab * ab, axis=2), 1e-9), 0, 1)
    closest = a + t[:, :, None] * ab
    return np.sqrt(np.sum((p - closest) ** 2, axis=2)).min(axis=1)


def test_hough_segments_are_exactly_cv2_houghlinesp():
    edges = cv2.Canny(lines_picture(), 100, 200)
    expected = cv2.HoughLinesP(edges, 1, np.pi / 180, 50, minLineLength=32, maxLineGap=10)
    np.testing.assert_array_equal(hough_segments(edges), expected.reshape(-1, 4))


def test_hough_map_draws_exactly_the_returned_segments():
    picture = lines_picture()
    segments = cv2.HoughLinesP(cv2.Canny(picture, 100, 200), 1, np.pi / 180, 50,
                               minLineLength=32, maxLineGap=10).reshape(-1, 4)
    # The picture's three lines are all found (each has a segment near it, in its direction).
    assert any(abs(y1 - 50) <= 3 and abs(y2 - 50) <= 3 for x1, y1, x2, y2 in segments)
    assert any(abs(x1 - 120) <= 3 and abs(x2 - 120) <= 3 for x1, y1, x2, y2 in segments)
    assert any(abs(x2 - x1) > 20 and 0.9 < abs((y2 - y1) / (x2 - x1)) < 1.6
               for x1, y1, x2, y2 in segments)

    out = hough_lines(picture, resolution=None)
    assert set(np.unique(out)) == {0, 255}
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 0], out[:, :, 2])
    white = np.argwhere(out[:, :, 0] == 255)[:, ::-1]  # (x, y)
    # Every drawn pixel lies on a returned segment (a 1-px line is within 1/sqrt(2) of it) ...
    assert distance_to_segments(white, segments).max() <= 0.75
    # ... and every returned segment is drawn: points sampled along it are white.
    for x1, y1, x2, y2 in segments:
        for t in np.linspace(0, 1, 50):
            x, y = round(x1 + t * (x2 - x1)), round(y1 + t * (y2 - y1))
            # Bresenham and rounding may differ by one pixel
            assert out[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2, 0].max() == 255


def test_hough_on_blank_image_is_black():
    assert hough_lines(np.zeros((64, 64, 3), np.uint8), resolution=None).max() == 0


# --- scribble ----------------------------------------------------------------------------------

def drawing() -> np.ndarray:
    page = np.full((100, 120, 3), 255, np.uint8)
    cv2.line(page, (10, 10), (100, 80), (0, 0, 0), 1)
    cv2.circle(page, (60, 40), 20, (30, 60, 200), 1)  # a coloured stroke
    page[90, 5] = (140, 140, 140)                     # light gray: not a stroke
    return page


def test_scribble_dark_on_light_is_v11_rule():
    page = drawing()
    expected = np.where(np.min(page, axis=2) < 127, 255, 0).astype(np.uint8)  # v1.1 scribble2image
    np.testing.assert_array_equal(scribble(page, stroke_growth_px=0, resolution=None),
                                  three(expected))


def test_scribble_auto_inversion_handles_light_on_dark():
    page = drawing()
    assert np.array_equal(scribble(255 - page, stroke_growth_px=0, resolution=None),
                          scribble(page, stroke_growth_px=0, resolution=None))
    # Forcing the wrong polarity gives the background instead of the strokes.
    wrong = scribble(page, stroke_growth_px=0, invert=False, resolution=None)
    assert wrong[0, 0, 0] == 255 and wrong[10, 10, 0] == 0


@pytest.mark.parametrize("growth", [1, 2, 4])
def test_scribble_growth_is_a_disc_of_that_radius(growth):
    page = np.full((41, 41, 3), 255, np.uint8)
    page[20, 20] = 0
    grown = scribble(page, stroke_growth_px=growth, resolution=None)[:, :, 0] == 255
    yy, xx = np.mgrid[:41, :41]
    distance = np.hypot(yy - 20, xx - 20)
    assert grown[distance <= growth].all()           # covers the disc of radius growth
    assert not grown[distance > growth + 0.5].any()  # and nothing much beyond it


# --- XDoG ----------------------------------------------------------------------------------------

def gaussian_blur_reference(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian in float64 with OpenCV's float kernel size (round(8 sigma + 1) | 1) and
    its default border (reflect-101 = numpy 'reflect')."""
    size = int(round(sigma * 8 + 1)) | 1
    x = np.arange(size) - size // 2
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    pad = size // 2
    out = image.astype(np.float64)
    for axis in (0, 1):
        padding = [(0, 0)] * out.ndim
        padding[axis] = (pad, pad)
        padded = np.pad(out, padding, mode="reflect")
        out = sum(kernel[i] * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis)
                  for i in range(size))
    return out


@pytest.mark.parametrize("threshold", [32, 33, 80])
def test_xdog_matches_an_independent_derivation(threshold):
    photo = data.astronaut()[100:356, 100:356]
    # With m = min over channels of (blur_5.0 - blur_0.5), A1111's test 2 * (255 - dog) > thr,
    # dog = trunc(clip(255 - m)), holds exactly when m > thr // 2 (integer steps of 255 - dog).
    m = np.min(gaussian_blur_reference(photo, 5.0) - gaussian_blur_reference(photo, 0.5), axis=2)
    expected = m > threshold // 2
    out = xdog_scribble(photo, threshold, resolution=None)
    assert set(np.unique(out)) <= {0, 255}
    disagree = (out[:, :, 0] == 255) != expected
    # float32 (OpenCV) vs float64 (here) may only disagree right at the threshold
    assert np.all(np.abs(m[disagree] - threshold // 2) < 1e-3)
    assert 0.01 < expected.mean() < 0.5  # a meaningful amount of strokes


def test_xdog_keeps_strong_responses_that_uint8_arithmetic_would_wrap():
    page = np.full((64, 64, 3), 255, np.uint8)
    page[:, 32] = 62  # a thin dark line
    m = np.min(gaussian_blur_reference(page, 5.0) - gaussian_blur_reference(page, 0.5), axis=2)
    assert np.all((128 <= m[:, 32]) & (m[:, 32] <= 144))  # 2 * m wraps to <= 32 in uint8
    assert np.all(xdog_scribble(page, resolution=None)[:, 32] == 255)


# --- binary --------------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [1, 100, 128, 254])
def test_binary_fixed_threshold(threshold):
    photo = data.astronaut()
    expected = np.where(gray(photo) > threshold, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(binary(photo, threshold, resolution=None), three(expected))


def otsu_threshold(gray: np.ndarray) -> int:
    """Brute-force Otsu: the first t maximising the between-class variance of (<= t, > t)."""
    counts = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = counts / counts.sum()
    levels = np.arange(256)
    best, best_t = -1.0, 0
    for t in range(256):
        w0, w1 = p[:t + 1].sum(), p[t + 1:].sum()
        if w0 == 0 or w1 == 0:
            continue
        mu0 = (levels[:t + 1] * p[:t + 1]).sum() / w0
        mu1 = (levels[t + 1:] * p[t + 1:]).sum() / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
        if between > best + 1e-12:
            best, best_t = between, t
    return best_t


@pytest.mark.parametrize("threshold", [0, 255])
def test_binary_otsu_for_0_and_255(threshold):
    photo = data.coffee()
    levels = gray(photo)
    t = otsu_threshold(levels)
    expected = np.where(levels > t, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(binary(photo, threshold, resolution=None), three(expected))
