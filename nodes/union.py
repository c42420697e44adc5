"""ControlNet Union nodes: several (image, control type) conditions fused in one ControlNet pass
(xinsir's multi-condition mode), where chaining Apply ControlNet runs the Union once per type."""

from __future__ import annotations

from ..controlnet_core.apply_options import ApplyOptions
from ..controlnet_core.union import UNION_CONTROL_TYPES
from .apply import CATEGORY, CONDITIONING_INPUTS, CONTROL_INPUTS, OPTIONAL_CONTROL_INPUTS, _ApplyNode

UNION_CONDITIONS = "CNS_UNION_CONDITIONS"

# Inputs shared by Apply ControlNet Union and Union Stack Entry: Apply ControlNet's, with the
# conditions in place of the image.
UNION_CONTROL_INPUTS = {
    "control_net": ("CONTROL_NET", {"tooltip": "A ControlNet Union or ProMax file from ControlNet Suite's Load ControlNet."}),
    "union_conditions": (UNION_CONDITIONS, {"tooltip": "The conditions, from Union Condition nodes."}),
    **{name: spec for name, spec in CONTROL_INPUTS.items() if name not in ("control_net", "image")},  # strength, start/end, mode
}
OPTIONAL_UNION_CONTROL_INPUTS = {
    **OPTIONAL_CONTROL_INPUTS,
    "mask": ("MASK", {"tooltip": (
        "Restricts the control to a region (1 = full control). Same size as the first condition's image, "
        "or the same aspect ratio (then resized). Not under tiled upscalers (Ultimate SD Upscale, Tiled Diffusion): "
        "they cannot crop it."
    )}),
}


class CNS_UnionCondition:
    DESCRIPTION = (
        "One condition for a ControlNet Union/ProMax: a control image and its type. Chain several (one image per "
        "type), then give them to 'Apply ControlNet Union', which fuses them in one ControlNet pass."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (UNION_CONDITIONS,)
    RETURN_NAMES = ("union_conditions",)
    OUTPUT_TOOLTIPS = ("The incoming conditions plus this one.",)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The control image of this type (a map from an annotator). It is resized to the latent's size x8 with a centre crop."}),
                "control_type": (list(UNION_CONTROL_TYPES), {"tooltip": (
                    "What the image is. tile and repaint need the ProMax model (8 types); the others work with both."
                )}),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": (
                    "How much this condition counts when it is fused with the others (diffusers' conditioning_scale). "
                    "With a single condition it scales the control, like strength."
                )}),
            },
            "optional": {
                "union_conditions": (UNION_CONDITIONS, {"tooltip": "Conditions to extend; leave empty to start a new list."}),
            },
        }

    def add(self, image, control_type, weight, union_conditions=None):
        from ..controlnet_core import comfy_control

        return (comfy_control.add_union_condition(union_conditions or (), image, control_type, weight),)


class CNS_ApplyControlNetUnion(_ApplyNode):
    DESCRIPTION = (
        "Adds a ControlNet Union/ProMax (loaded with ControlNet Suite's Load ControlNet) to the positive and negative "
        "conditioning, with all its conditions fused in one pass, on top of any control already there."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {**CONDITIONING_INPUTS, **UNION_CONTROL_INPUTS},
            "optional": OPTIONAL_UNION_CONTROL_INPUTS,
        }

    def apply(self, positive, negative, control_net, union_conditions, strength, start_percent, end_percent,
              control_mode, mask=None, block_weights="", strength_schedule=None, latent_strengths=None,
              uncond_multiplier=1.0):
        from ..controlnet_core import comfy_control

        strength_applied = comfy_control.union_strength(union_conditions, strength)
        return self.attached(positive, negative, strength_applied, lambda: comfy_control.configured_union_control(
            control_net, union_conditions, ApplyOptions(
                strength, start_percent, end_percent, control_mode, mask, block_weights, strength_schedule,
                latent_strengths, uncond_multiplier,
            ),
        ))


NODE_CLASS_MAPPINGS = {
    "CNS_UnionCondition": CNS_UnionCondition,
    "CNS_ApplyControlNetUnion": CNS_ApplyControlNetUnion,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CNS_UnionCondition": "Union Condition (ControlNet Suite)",
    "CNS_ApplyControlNetUnion": "Apply ControlNet Union (ControlNet Suite)",
}
