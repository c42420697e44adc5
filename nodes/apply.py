"""Apply node: one ControlNet on positive and negative conditioning."""

from __future__ import annotations

from typing import Any, Callable

from ..controlnet_core import control_modes, schedule
from ..controlnet_core.apply_options import ApplyOptions

CATEGORY = "ControlNet Suite/apply"
STRENGTH_SCHEDULE = "CNS_STRENGTH_SCHEDULE"
LATENT_STRENGTHS = "CNS_LATENT_STRENGTHS"

# Inputs shared with the stack and Union nodes (input names are a public API: never rename).
CONDITIONING_INPUTS = {
    "positive": ("CONDITIONING", {"tooltip": "Positive (prompt) conditioning."}),
    "negative": ("CONDITIONING", {"tooltip": "Negative conditioning."}),
}
CONTROL_INPUTS = {
    "control_net": ("CONTROL_NET", {"tooltip": "A ControlNet, T2I-Adapter or ControlNet-LLLite from a ControlNet Suite loader, or a ControlNet or T2I-Adapter from ComfyUI's (every option works on each)."}),
    "image": ("IMAGE", {"tooltip": "The control image (a map from an annotator: edges, depth, pose...). It is resized to the latent's size x8 with a centre crop."}),
    "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "Multiplies every residual. 0 leaves the conditioning unchanged."}),
    "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": "Fraction of the sampling where the control starts (0 = first step)."}),
    "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": "Fraction of the sampling where the control ends (1 = last step). Steps outside start..end cost nothing."}),
    "control_mode": (list(control_modes.CONTROL_MODES), {"default": control_modes.BALANCED, "tooltip": (
        "balanced: strength on every residual, both CFG branches. "
        "prompt_more_important: residual i weighted 0.825^(N-1-i) (middle block 1.0), both branches. "
        "controlnet_more_important: same weights, conditional branch only (the original guess mode). "
        "cfg_resolution_weighting: the paper's CFG resolution weighting, conditional branch only, residual i weighted 64/h_i. "
        "A T2I-Adapter's 4 features count as its residuals; its soft weights are A1111's 0.25, 0.62, 0.825, 1.0. "
        "A ControlNet-LLLite's modules take the weight of the SDXL residual at their depth of the U-Net."
    )}),
}
OPTIONAL_CONTROL_INPUTS = {
    "mask": ("MASK", {"tooltip": (
        "Restricts the control to a region (1 = full control). Same size as the image, or the same aspect ratio (then "
        "resized). Not under tiled upscalers (Ultimate SD Upscale, Tiled Diffusion): they cannot crop it."
    )}),
    "block_weights": ("STRING", {"default": "", "multiline": False, "tooltip": (
        "Optional per-residual multipliers: N comma-separated numbers, shallowest block first and the middle block "
        "last (13 for SD1.x/SD2.x, 10 for SDXL and SDXL ControlNet-LLLite, 4 for a T2I-Adapter), or a preset: " + ", ".join(control_modes.BLOCK_WEIGHT_PRESETS)
        + ". Empty: all 1."
    )}),
    "strength_schedule": (STRENGTH_SCHEDULE, {"tooltip": (
        "Optional: the strength over the sampling, from a 'ControlNet Strength Schedule' node (timestep keyframes). "
        "Each step's strength is strength times the schedule's multiplier there; steps where it is 0 cost nothing."
    )}),
    "latent_strengths": (LATENT_STRENGTHS, {"tooltip": (
        "Optional: a strength per latent of the batch, from a 'ControlNet Latent Strengths' node (latent keyframes): "
        "for batches of variations or animation frames. Multiplies the strength (and the mask) latent by latent."
    )}),
    "uncond_multiplier": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
        "The unconditional (negative) branch's share of the control: 1 = the same control on both CFG branches, "
        "0 = none there (runs the control on the conditional rows only; prompt_more_important with 0 is "
        "controlnet_more_important), in between a blend (Advanced-ControlNet's uncond_multiplier). For balanced and "
        "prompt_more_important; the other modes already give the unconditional branch nothing."
    )}),
}


class _ApplyNode:
    """What the apply nodes share: the outputs, and putting one configured control on the
    positive and negative conditioning (nothing at all when its strength is 0)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the control.", "Negative conditioning with the control.")
    FUNCTION = "apply"

    @staticmethod
    def attached(positive: list, negative: list, strength: float, configured: Callable[[], Any]) -> tuple:
        from ..controlnet_core import comfy_control

        if strength == 0:
            return (positive, negative)
        return comfy_control.attach_control(positive, negative, configured())


class CNS_ApplyControlNet(_ApplyNode):
    DESCRIPTION = (
        "Adds a ControlNet to the positive and negative conditioning, on top of any control already there "
        "(ComfyUI's built-in or Advanced-ControlNet chains keep their contribution)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {**CONDITIONING_INPUTS, **CONTROL_INPUTS},
            "optional": OPTIONAL_CONTROL_INPUTS,
        }

    def apply(self, positive, negative, control_net, image, strength, start_percent, end_percent, control_mode,
              mask=None, block_weights="", strength_schedule=None, latent_strengths=None,
              uncond_multiplier=1.0):
        from ..controlnet_core import comfy_control

        return self.attached(positive, negative, strength, lambda: comfy_control.configured_control(
            control_net, image, ApplyOptions(
                strength, start_percent, end_percent, control_mode, mask, block_weights, strength_schedule,
                latent_strengths, uncond_multiplier,
            ),
        ))


class CNS_StrengthSchedule:
    DESCRIPTION = (
        "A ControlNet's strength over the sampling (timestep keyframes): percent=multiplier keyframes, held or eased "
        "from one to the next. Connect it to an apply or stack node's strength_schedule input."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (STRENGTH_SCHEDULE,)
    RETURN_NAMES = ("strength_schedule",)
    OUTPUT_TOOLTIPS = ("The schedule, for the strength_schedule input of the apply and stack nodes.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "keyframes": ("STRING", {"default": schedule.EXAMPLE, "multiline": True, "tooltip": (
                    "percent=multiplier entries, separated by commas or new lines, in increasing percent order. "
                    "percent: of the sampling, 0 = first step, 1 = end (as start_percent/end_percent). multiplier: "
                    "times the apply node's strength, from that percent on. Before the first keyframe the multiplier "
                    "is 1; after the last it stays at the last value. With hold, an entry may end in its own "
                    "guaranteed steps, for example 0.3=0.2 (2 steps), in place of guarantee_steps."
                )}),
                "interpolation": (list(schedule.INTERPOLATIONS), {"default": schedule.LINEAR, "tooltip": (
                    "From one keyframe to the next: hold keeps each value until the next keyframe; linear, ease-in "
                    "(u^2), ease-out (1-(1-u)^2) and ease-in-out ((1-cos(pi u))/2) go smoothly, as Advanced-ControlNet's "
                    "interpolations do."
                )}),
            },
            "optional": {
                "guarantee_steps": ("INT", {"default": 0, "min": 0, "max": schedule.MAX_GUARANTEE_STEPS, "tooltip": (
                    "hold only: once a keyframe is reached it stays in effect for at least this many steps, even when "
                    "later keyframes have started, so a keyframe between two steps is not skipped (Advanced-ControlNet's "
                    "guarantee_steps, whose keyframes default to 1). 0: each step takes the last keyframe started. "
                    "An entry's own '(N steps)' overrides it for that keyframe."
                )}),
            },
        }

    def make(self, keyframes, interpolation, guarantee_steps=0):
        return (schedule.parse_schedule(keyframes, interpolation, guarantee_steps),)


class CNS_LatentStrengths:
    DESCRIPTION = (
        "A ControlNet's strength per latent of the batch (latent keyframes): index=multiplier or start:stop=multiplier "
        "entries. Connect it to an apply or stack node's latent_strengths input."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (LATENT_STRENGTHS,)
    RETURN_NAMES = ("latent_strengths",)
    OUTPUT_TOOLTIPS = ("The strengths, for the latent_strengths input of the apply and stack nodes.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "index_strengths": ("STRING", {"default": schedule.LATENT_EXAMPLE, "multiline": True, "tooltip": (
                    "index=multiplier or start:stop=multiplier entries, separated by commas or new lines. Indices count "
                    "from 0; negative ones from the end (-1 = the last latent); a range stops before 'stop' (0:4 = "
                    "latents 0, 1, 2, 3) and may leave either end open (4: = from latent 4 on). Later entries win. "
                    "An index the batch does not have is refused when sampling."
                )}),
                "other_latents": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": (
                    "The multiplier of the latents no entry names (Advanced-ControlNet's null_latent_kf_strength, "
                    "whose default is 0)."
                )}),
            }
        }

    def make(self, index_strengths, other_latents):
        return (schedule.parse_latent_strengths(index_strengths, other_latents),)


NODE_CLASS_MAPPINGS = {
    "CNS_ApplyControlNet": CNS_ApplyControlNet,
    "CNS_StrengthSchedule": CNS_StrengthSchedule,
    "CNS_LatentStrengths": CNS_LatentStrengths,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CNS_ApplyControlNet": "Apply ControlNet (ControlNet Suite)",
    "CNS_StrengthSchedule": "ControlNet Strength Schedule (ControlNet Suite)",
    "CNS_LatentStrengths": "ControlNet Latent Strengths (ControlNet Suite)",
}
