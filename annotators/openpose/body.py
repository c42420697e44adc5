"""Body keypoints: heatmaps and part affinity fields (PAFs) -> people.

Cao et al. 2017 ("Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields"), in the
form ControlNet v1.1 runs it (`annotator/openpose/body.py`; controlnet-aux 0.0.10 is the same):
  1. keypoint candidates: local maxima of each Gaussian-smoothed heatmap above a threshold;
  2. limb candidates: for each pair of keypoint types joined by a limb, score every pair of
     candidates by the PAF sampled along the segment between them, keep the best disjoint pairs;
  3. people: grow skeletons limb by limb, merging skeletons that a limb joins.
Keypoints are the 18 of OpenPose's COCO model, in this order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from torch import nn

from .inference import maps_at_scale

BODY_PARTS = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
              "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
              "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")

# v1.1 body.py constants.
BOX_SIZE = 368                 # the network's training input height (boxsize)
SCALE_SEARCH = (0.5,)          # image height = SCALE * BOX_SIZE; v1.1 keeps one scale for speed
HEATMAP_SIGMA = 3              # gaussian_filter sigma before peak search
PEAK_THRESHOLD = 0.1           # thre1: a smoothed heatmap peak must exceed this
PAF_THRESHOLD = 0.05           # thre2: a PAF sample "supports" a limb above this
PAF_SAMPLES = 10               # mid_num: samples along each candidate limb
PAF_MIN_SUPPORT = 0.8          # criterion1: more than 80% of samples must support the limb
MIN_LIMB_NORM = 0.001          # avoids dividing by zero for coincident candidates
MIN_PERSON_PARTS = 4           # people with fewer keypoints are dropped
MIN_PERSON_MEAN_SCORE = 0.4    # ... and those whose score per keypoint is below this

# Limbs as (from, to) keypoint indices, and the PAF channels (x, y) that encode each one.
# The last two (shoulder-ear) are redundant limbs that never start a new person.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
         (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17))
LIMB_PAF_CHANNELS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3),
                     (4, 5), (6, 7), (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33),
                     (36, 37), (18, 19), (26, 27))
LIMBS_THAT_START_PEOPLE = 17


@dataclass
class Peak:
    """A keypoint candidate: pixel position, raw heatmap value, id unique over all parts."""
    x: int
    y: int
    score: float
    id: int


@dataclass
class LimbCandidate:
    from_id: int
    to_id: int
    score: float


@dataclass
class Person:
    """`parts[k]` is the Peak id of keypoint k or -1; score sums keypoint and limb scores."""
    parts: list[int]
    score: float
    part_count: int


@dataclass
class BodyDetection:
    """One person: 18 entries (x, y, heatmap score) in pixels, None where not found."""
    keypoints: list[tuple[float, float, float] | None]
    total_score: float
    part_count: int


def body_maps(network: nn.Module, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps HxWx19, pafs HxWx38), float64 at the image's size, averaged over SCALE_SEARCH."""
    height, width = image_bgr.shape[:2]
    heatmaps = np.zeros((height, width, 19))
    pafs = np.zeros((height, width, 38))
    for scale in SCALE_SEARCH:
        factor = scale * BOX_SIZE / height
        paf, heatmap = maps_at_scale(network, image_bgr, int(height * factor), int(width * factor),
                                     height, width)
        heatmaps += heatmap / len(SCALE_SEARCH)
        pafs += paf / len(SCALE_SEARCH)
    return heatmaps, pafs


def find_peaks(heatmap: np.ndarray, first_id: int) -> list[Peak]:
    """Pixels of the smoothed heatmap that are >= their 4 neighbours and above PEAK_THRESHOLD,
    in row-major order; the score is the unsmoothed value there."""
    smooth = gaussian_filter(heatmap, sigma=HEATMAP_SIGMA)
    padded = np.pad(smooth, 1)  # zeros outside: never above a peak, which exceeds the threshold
    centre = padded[1:-1, 1:-1]
    is_peak = ((centre >= padded[:-2, 1:-1]) & (centre >= padded[2:, 1:-1])
               & (centre >= padded[1:-1, :-2]) & (centre >= padded[1:-1, 2:])
               & (centre > PEAK_THRESHOLD))
    ys, xs = np.nonzero(is_peak)
    return [Peak(int(x), int(y), float(heatmap[y, x]), first_id + i) for i, (x, y) in enumerate(zip(xs, ys))]


def limb_score(start: Peak, end: Peak, paf_x: np.ndarray, paf_y: np.ndarray, image_height: int) -> float | None:
    """Mean PAF component along the unit vector start -> end, minus a penalty for limbs longer
    than half the image; None when too few samples support the limb or the score is <= 0."""
    dx, dy = end.x - start.x, end.y - start.y
    norm = max(MIN_LIMB_NORM, math.sqrt(dx * dx + dy * dy))
    # Sample points rounded half-to-even, as v1.1's round() on numpy floats.
    xs = np.round(np.linspace(start.x, end.x, num=PAF_SAMPLES)).astype(int)
    ys = np.round(np.linspace(start.y, end.y, num=PAF_SAMPLES)).astype(int)
    alignment = paf_x[ys, xs] * (dx / norm) + paf_y[ys, xs] * (dy / norm)
    score = float(np.sum(alignment)) / PAF_SAMPLES + min(0.5 * image_height / norm - 1, 0)
    supported = np.count_nonzero(alignment > PAF_THRESHOLD) > PAF_MIN_SUPPORT * PAF_SAMPLES
    return score if supported and score > 0 else None


def connect_limb(starts: list[Peak], ends: list[Peak], paf_x: np.ndarray, paf_y: np.ndarray,
                 image_height: int) -> list[LimbCandidate]:
    """Greedy matching: best-scoring pairs first, each candidate used at most once."""
    scored = []
    for i, start in enumerate(starts):
        for j, end in enumerate(ends):
            score = limb_score(start, end, paf_x, paf_y, image_height)
            if score is not None:
                scored.append((score, i, j))
    scored.sort(key=lambda item: item[0], reverse=True)  # stable: ties keep (i, j) order
    limbs: list[LimbCandidate] = []
    used_starts, used_ends = set(), set()
    for score, i, j in scored:
        if i in used_starts or j in used_ends:
            continue
        limbs.append(LimbCandidate(starts[i].id, ends[j].id, score))
        used_starts.add(i)
        used_ends.add(j)
        if len(limbs) >= min(len(starts), len(ends)):
            break
    return limbs


def assemble_people(limbs_by_type: list[list[LimbCandidate] | None], peak_scores: list[float]) -> list[Person]:
    """Grow people limb type by limb type (v1.1's `subset` loop). A limb whose start or end
    already belongs to one person extends it; one that touches two disjoint people merges them;
    one that touches nobody starts a person (except the two redundant shoulder-ear limbs)."""
    people: list[Person] = []
    for limb_type, limbs in enumerate(limbs_by_type):
        if limbs is None:  # a keypoint type of this limb had no candidates at all
            continue
        part_a, part_b = LIMBS[limb_type]
        for limb in limbs:
            touching = [p for p in people if p.parts[part_a] == limb.from_id or p.parts[part_b] == limb.to_id]
            if len(touching) == 1 or (len(touching) >= 2 and shares_parts(touching[0], touching[1])):
                person = touching[0]
                # v1.1 only checks for an unchanged end when exactly one person is touched.
                if len(touching) >= 2 or person.parts[part_b] != limb.to_id:
                    person.parts[part_b] = limb.to_id
                    person.part_count += 1
                    person.score += peak_scores[limb.to_id] + limb.score
            elif len(touching) >= 2:
                first, second = touching[0], touching[1]
                first.parts = [a if a >= 0 else b for a, b in zip(first.parts, second.parts)]
                first.part_count += second.part_count
                first.score += second.score
                first.score += limb.score  # two steps: v1.1's order of float additions
                people.remove(second)
            elif limb_type < LIMBS_THAT_START_PEOPLE:
                parts = [-1] * len(BODY_PARTS)
                parts[part_a], parts[part_b] = limb.from_id, limb.to_id
                people.append(Person(parts, peak_scores[limb.from_id] + peak_scores[limb.to_id] + limb.score, 2))
    return [p for p in people
            if p.part_count >= MIN_PERSON_PARTS and p.score / p.part_count >= MIN_PERSON_MEAN_SCORE]


def shares_parts(first: Person, second: Person) -> bool:
    return any(a >= 0 and b >= 0 for a, b in zip(first.parts, second.parts))


def decode_body(heatmaps: np.ndarray, pafs: np.ndarray) -> list[BodyDetection]:
    """People from image-sized heatmaps (HxWx19) and PAFs (HxWx38)."""
    peaks_by_part: list[list[Peak]] = []
    for part in range(len(BODY_PARTS)):
        first_id = sum(len(peaks) for peaks in peaks_by_part)
        peaks_by_part.append(find_peaks(heatmaps[:, :, part], first_id))
    all_peaks = [peak for peaks in peaks_by_part for peak in peaks]

    limbs_by_type: list[list[LimbCandidate] | None] = []
    for (part_a, part_b), (channel_x, channel_y) in zip(LIMBS, LIMB_PAF_CHANNELS):
        starts, ends = peaks_by_part[part_a], peaks_by_part[part_b]
        if not starts or not ends:
            limbs_by_type.append(None)
            continue
        limbs_by_type.append(connect_limb(starts, ends, pafs[:, :, channel_x], pafs[:, :, channel_y],
                                          heatmaps.shape[0]))

    people = assemble_people(limbs_by_type, [peak.score for peak in all_peaks])
    return [BodyDetection(
        keypoints=[None if i < 0 else (all_peaks[i].x, all_peaks[i].y, all_peaks[i].score) for i in person.parts],
        total_score=person.score, part_count=person.part_count) for person in people]
