"""Strength schedules: a control's strength as a function of how far the sampling has got
(timestep keyframes), and per latent of the batch (latent keyframes, `LatentStrengths` below).

A schedule is a list of keyframes `percent=multiplier`. The control's strength at a step is its
strength times the schedule's multiplier at the step's percent, where a step's percent is the one
ComfyUI's start/end use: the p with `percent_to_sigma(p)` equal to the step's sigma (0 = the
first step, 1 = the end). Between two keyframes the multiplier is held (`hold`: the earlier
keyframe's value until the next keyframe) or eased from one value to the next with ACN's curves
(Advanced-ControlNet's `StrengthInterpolation`: linear, u², 1 − (1 − u)², (1 − cos πu) / 2).
Before the first keyframe the schedule starts at 1 at percent 0 (the control as configured);
after the last one its value holds.

`SigmaSchedule` is the schedule on one model's sigmas (built when sampling starts): a keyframe
takes effect from its sigma down, as start_percent does, so hold schedules switch exactly where
start/end would; eased ones find the step's percent between two keyframes by bisection.

Guaranteed steps (Advanced-ControlNet's `guarantee_steps`, hold schedules only): a keyframe, once
reached, stays in effect for at least that many steps even when later keyframes have started, so a
keyframe that falls between two steps is not skipped. That depends on the steps already run, so
such a schedule walks its keyframes step by step (`step_keyframe`) as Advanced-ControlNet's
`prepare_current_timestep` does. One number can apply to every keyframe (the node's input), and an
entry can give its own: `0.3=0.2 (2 steps)`, as ACN sets it per keyframe.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from .errors import ControlNetError

HOLD = "hold"
LINEAR = "linear"
EASE_IN = "ease-in"
EASE_OUT = "ease-out"
EASE_IN_OUT = "ease-in-out"


def hold(u: float) -> float:
    return 0.0


def linear(u: float) -> float:
    return u


def ease_in(u: float) -> float:
    return u * u


def ease_out(u: float) -> float:
    return 1.0 - (1.0 - u) ** 2


def ease_in_out(u: float) -> float:
    return (1.0 - math.cos(math.pi * u)) / 2.0


# how far (0..1) from one keyframe's multiplier to the next's, at a fraction u of the way
EASING: dict[str, Callable[[float], float]] = {
    HOLD: hold, LINEAR: linear, EASE_IN: ease_in, EASE_OUT: ease_out, EASE_IN_OUT: ease_in_out,
}
INTERPOLATIONS = tuple(EASING)

START_MULTIPLIER = 1.0  # before the first keyframe: the control as configured
MAX_GUARANTEE_STEPS = 10000  # the node's bound: more steps than any sampling runs
BISECTION_STEPS = 40  # halvings of a keyframe interval: the percent to within 2^-40 of it
EXAMPLE = "0=1, 0.5=0.5, 1=0"
_ENTRY_SEPARATORS = re.compile(r"[,\n;]")
# an entry's own guaranteed steps, after its multiplier: "(2 steps)", "(1 step)"
_ENTRY_STEPS = re.compile(r"^(?P<keyframe>.*?)\s*\(\s*(?P<steps>\S+)\s+steps?\s*\)$", re.IGNORECASE)


@dataclass(frozen=True)
class Keyframe:
    percent: float  # of the sampling, 0..1
    multiplier: float  # of the control's strength, from this percent on
    guarantee_steps: int = 0  # steps it stays in effect once reached, whatever keyframes start meanwhile


@dataclass(frozen=True)
class StrengthSchedule:
    """Keyframes in increasing percent order, the first at percent 0, and how to go between them."""

    keyframes: tuple[Keyframe, ...]
    interpolation: str = LINEAR

    @property
    def counts_steps(self) -> bool:
        """Whether a keyframe guarantees steps, so that the multiplier depends on the steps run."""
        return any(frame.guarantee_steps > 0 for frame in self.keyframes)

    def at(self, percent: float) -> float:
        """The multiplier at `percent` of the sampling."""
        k = max((i for i, frame in enumerate(self.keyframes) if frame.percent <= percent), default=0)
        return self.between(k, percent)

    def between(self, k: int, percent: float) -> float:
        """The multiplier at `percent`, which lies from keyframe k to the next one."""
        frames = self.keyframes
        if k == len(frames) - 1:
            return frames[k].multiplier
        start, end = frames[k], frames[k + 1]
        u = min(max((percent - start.percent) / (end.percent - start.percent), 0.0), 1.0)
        return start.multiplier + (end.multiplier - start.multiplier) * EASING[self.interpolation](u)


def parse_schedule(text: str, interpolation: str = LINEAR, guarantee_steps: int = 0) -> StrengthSchedule:
    """A schedule from `percent=multiplier` entries separated by commas, semicolons or new lines
    (for example '0=1, 0.5=0.5, 1=0'), refused with a message naming the entry that is wrong.
    Every written keyframe guarantees `guarantee_steps` steps, or its own count when the entry
    ends in one ('0.3=0.2 (2 steps)'); guaranteed steps need hold interpolation."""
    if interpolation not in EASING:
        raise ControlNetError(f"unknown interpolation '{interpolation}': use one of {', '.join(INTERPOLATIONS)}")
    if isinstance(guarantee_steps, bool) or not isinstance(guarantee_steps, int) or guarantee_steps < 0:
        raise ControlNetError(f"guarantee_steps must be a whole number of at least 0, not {guarantee_steps!r}")
    if guarantee_steps > 0 and interpolation != HOLD:
        raise ControlNetError(
            f"guarantee_steps counts the steps each keyframe's value is held, so it needs hold interpolation, not "
            f"{interpolation}: set interpolation to hold, or guarantee_steps to 0"
        )
    entries = _entries(text)
    if not entries:
        raise ControlNetError(
            f"the strength schedule has no keyframes: write percent=multiplier entries separated by commas, for example {EXAMPLE}"
        )
    keyframes = [_keyframe(entry, guarantee_steps) for entry in entries]
    own_steps = next((entry for entry, frame in zip(entries, keyframes) if frame.guarantee_steps > 0), None)
    if own_steps is not None and interpolation != HOLD:
        raise ControlNetError(
            f"strength schedule entry '{own_steps}' guarantees steps, which count the steps a keyframe's value is "
            f"held, so it needs hold interpolation, not {interpolation}: set interpolation to hold, or remove the steps"
        )
    for (earlier, before), (later, after) in zip(zip(entries, keyframes), zip(entries[1:], keyframes[1:])):
        if after.percent <= before.percent:
            raise ControlNetError(
                f"strength schedule keyframes must go in increasing percent order, each percent once: '{later}' comes "
                f"after '{earlier}'"
            )
    if keyframes[0].percent > 0.0:
        keyframes.insert(0, Keyframe(0.0, START_MULTIPLIER))
    return StrengthSchedule(tuple(keyframes), interpolation)


def _entries(text: str) -> list[str]:
    """The entries of a schedule's or latent strengths' text, without blanks."""
    return [entry.strip() for entry in _ENTRY_SEPARATORS.split(text) if entry.strip()]


def _sides(entry: str) -> tuple[str, float]:
    """(where, multiplier) of a `where=multiplier` entry; ValueError when it is not one."""
    where, multiplier = entry.split("=")  # ValueError unless exactly one "="
    return where.strip(), float(multiplier)


def _is_multiplier(value: float) -> bool:
    return math.isfinite(value) and value >= 0.0


def _keyframe(entry: str, guarantee_steps: int) -> Keyframe:
    """One entry's keyframe; `guarantee_steps` unless the entry ends in its own '(N steps)'."""
    own = _ENTRY_STEPS.match(entry)
    if own is not None:
        if not own.group("steps").isdigit():  # whole numbers only: no sign, no point
            raise ControlNetError(
                f"strength schedule entry '{entry}': the guaranteed steps must be a whole number of at least 0, "
                "for example 0.5=0.8 (2 steps)"
            )
        guarantee_steps = int(own.group("steps"))
        if guarantee_steps > MAX_GUARANTEE_STEPS:
            raise ControlNetError(f"strength schedule entry '{entry}': at most {MAX_GUARANTEE_STEPS} guaranteed steps")
    try:
        where, multiplier = _sides(entry if own is None else own.group("keyframe"))
        percent = float(where)
    except ValueError:
        raise ControlNetError(
            f"strength schedule entry '{entry}' is not percent=multiplier (two numbers, for example 0.5=0.8)"
        ) from None
    if not 0.0 <= percent <= 1.0:
        raise ControlNetError(f"strength schedule entry '{entry}': the percent must lie in 0..1")
    if not _is_multiplier(multiplier):
        raise ControlNetError(f"strength schedule entry '{entry}': the multiplier must be a number of at least 0")
    return Keyframe(percent, multiplier, guarantee_steps)


def percent_of_sigma(sigma: float, low: float, high: float, percent_to_sigma: Callable[[float], float]) -> float:
    """The percent p in low..high with percent_to_sigma(p) = sigma, by bisection: percent_to_sigma
    decreases, and sigma lies from percent_to_sigma(high) to percent_to_sigma(low)."""
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2.0
        if float(percent_to_sigma(middle)) >= sigma:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


@dataclass(frozen=True)
class KeyframeWalk:
    """Where a walk through hold keyframes stands after a step."""

    keyframe: int = -1  # the keyframe in effect (-1: before the first step)
    steps: int = 0  # steps it has been in effect
    sigma: float | None = None  # of the last step


def effective_guarantees(schedule: StrengthSchedule, keyframe_sigmas: Sequence[float], max_sigma: float) -> list[int]:
    """Each keyframe's guaranteed steps in a sampling that starts at `max_sigma`: none for a keyframe
    that started before it (a second sampler's pass; Advanced-ControlNet's get_effective_guarantee_steps)."""
    return [
        0 if keyframe_sigma > max_sigma else frame.guarantee_steps
        for frame, keyframe_sigma in zip(schedule.keyframes, keyframe_sigmas)
    ]


def step_keyframe(
    walk: KeyframeWalk, sigma: float, keyframe_sigmas: Sequence[float], guarantees: Sequence[int]
) -> KeyframeWalk:
    """The walk after a step at `sigma`. A new sigma is a new step (a sampler calls the model a few
    times per sigma: CFG halves, other conds). Once the keyframe in effect has had its guaranteed
    steps, the walk moves on through the keyframes that have started (keyframe sigma >= sigma),
    stopping at the first that guarantees steps; it never goes back."""
    if sigma == walk.sigma:
        return walk
    keyframe, steps = walk.keyframe, walk.steps
    if keyframe < 0 or steps >= guarantees[keyframe]:
        for later in range(keyframe + 1, len(keyframe_sigmas)):
            if keyframe_sigmas[later] < sigma:
                break  # not started yet, nor any after it
            keyframe, steps = later, 0
            if guarantees[later] > 0:
                break
    return KeyframeWalk(keyframe, steps + 1, sigma)


class SigmaSchedule:
    """A schedule on one model's sigmas (`percent_to_sigma` is its model sampling's), for one run."""

    def __init__(self, schedule: StrengthSchedule, percent_to_sigma: Callable[[float], float]):
        self.schedule = schedule
        self.percent_to_sigma = percent_to_sigma
        self.sigmas = [float(percent_to_sigma(frame.percent)) for frame in schedule.keyframes]
        self._multipliers: dict[float, float] = {}  # per sigma: a run visits each a few times
        self._walk = KeyframeWalk()  # with guaranteed steps: the keyframe in effect

    def multiplier(self, sigma: float, max_sigma: float = math.inf) -> float:
        """The schedule's multiplier at a step of this sigma, in a sampling that starts at
        `max_sigma`. Called at every step (in or out of start/end) when keyframes guarantee steps."""
        if self.schedule.counts_steps:
            guarantees = effective_guarantees(self.schedule, self.sigmas, max_sigma)
            self._walk = step_keyframe(self._walk, sigma, self.sigmas, guarantees)
            return self.schedule.keyframes[self._walk.keyframe].multiplier
        if sigma not in self._multipliers:
            self._multipliers[sigma] = self._multiplier(sigma)
        return self._multipliers[sigma]

    def _multiplier(self, sigma: float) -> float:
        # the last keyframe in effect: each takes effect from its sigma down (the first's is the largest)
        k = max((i for i, keyframe_sigma in enumerate(self.sigmas) if sigma <= keyframe_sigma), default=0)
        frames = self.schedule.keyframes
        if self.schedule.interpolation == HOLD or k == len(frames) - 1:
            return frames[k].multiplier
        percent = percent_of_sigma(sigma, frames[k].percent, frames[k + 1].percent, self.percent_to_sigma)
        return self.schedule.between(k, percent)


# --- over the latent batch (latent keyframes) -------------------------------------------------

LATENT_EXAMPLE = "0=1, 1=0.75, 2=0.5, 3=0.25"


@dataclass(frozen=True)
class LatentStrength:
    start: int | None  # the first latent (negative: from the end; None: the first of the batch)
    stop: int | None  # one past the last (a range), None: to the end of the batch
    multiplier: float
    entry: str  # as written, for messages
    is_range: bool


@dataclass(frozen=True)
class LatentStrengths:
    """Multipliers of a control's strength per latent of the batch (Advanced-ControlNet's latent
    keyframes): `index=multiplier` or `start:stop=multiplier` (stop excluded, negative indices
    from the end, as Python's slices), later entries over earlier ones; latents no entry names
    get `others`."""

    entries: tuple[LatentStrength, ...]
    others: float = 1.0

    def for_batch(self, latents: int) -> list[float]:
        """One multiplier per latent of a batch of `latents`; an entry naming a latent the batch
        does not have is refused by name."""
        multipliers = [self.others] * latents
        for entry in self.entries:
            if entry.is_range:
                bounds = [b for b in (entry.start, entry.stop) if b is not None]
                if any(not -latents <= b <= latents for b in bounds):
                    raise self._outside(entry, latents)
                picked = range(latents)[entry.start:entry.stop]
            else:
                if not -latents <= entry.start < latents:
                    raise self._outside(entry, latents)
                picked = [entry.start % latents]
            for index in picked:
                multipliers[index] = entry.multiplier
        return multipliers

    @staticmethod
    def _outside(entry: LatentStrength, latents: int) -> ControlNetError:
        return ControlNetError(
            f"latent strength entry '{entry.entry}' names latents the batch does not have: it has {latents} "
            f"(indices 0..{latents - 1}, or -{latents}..-1 from the end)"
        )


def parse_latent_strengths(text: str, others: float = 1.0) -> LatentStrengths:
    """Latent strengths from `index=multiplier` / `start:stop=multiplier` entries separated by
    commas, semicolons or new lines, refused with a message naming the entry that is wrong."""
    entries = _entries(text)
    if not entries:
        raise ControlNetError(
            f"the latent strengths have no entries: write index=multiplier entries separated by commas, for example {LATENT_EXAMPLE}"
        )
    if not _is_multiplier(others):
        raise ControlNetError("the strength of the other latents must be a number of at least 0")
    return LatentStrengths(tuple(_latent_strength(entry) for entry in entries), others)


def _latent_strength(entry: str) -> LatentStrength:
    try:
        where, multiplier = _sides(entry)
        if ":" in where:
            bounds = where.split(":")
            if len(bounds) != 2:
                raise ValueError
            start, stop = (int(b) if b.strip() else None for b in bounds)
            is_range = True
        else:
            start, stop, is_range = int(where), None, False
    except ValueError:
        raise ControlNetError(
            f"latent strength entry '{entry}' is not index=multiplier or start:stop=multiplier (whole-number indices, "
            "for example 2=0.5 or 0:4=0.8)"
        ) from None
    if not _is_multiplier(multiplier):
        raise ControlNetError(f"latent strength entry '{entry}': the multiplier must be a number of at least 0")
    return LatentStrength(start, stop, multiplier, entry, is_range)
