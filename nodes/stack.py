"""Stack nodes: collect several controls, then apply them all at once."""

from __future__ import annotations

from typing import Any, Callable

from ..controlnet_core.apply_options import ApplyOptions
from .apply import CONDITIONING_INPUTS, CONTROL_INPUTS, OPTIONAL_CONTROL_INPUTS
from .union import OPTIONAL_UNION_CONTROL_INPUTS, UNION_CONTROL_INPUTS

CATEGORY = "ControlNet Suite/stack"
STACK_TYPE = "CNS_CONTROL_STACK"


class _StackEntry:
    """What both entry nodes share: the output, and adding one configured control to a copy of
    the incoming stack (the incoming one may feed other nodes)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (STACK_TYPE,)
    RETURN_NAMES = ("control_stack",)
    OUTPUT_TOOLTIPS = ("The incoming stack plus this control.",)
    FUNCTION = "add"
    STACK_INPUT = {"control_stack": (STACK_TYPE, {"tooltip": "A stack to extend; leave empty to start a new one."})}

    @staticmethod
    def extended(control_stack: tuple | None, strength: float, configured: Callable[[], Any]) -> tuple:
        from ..controlnet_core import comfy_control

        stack = tuple(control_stack or ())
        if strength == 0:
            return (stack,)
        return (stack + (comfy_control.StackEntry(configured()),),)


class CNS_ControlStackEntry(_StackEntry):
    DESCRIPTION = (
        "Adds one control (ControlNet, image, strength, range, mode, optional mask, block weights, strength "
        "schedule, latent strengths and uncond multiplier) to a stack. Chain entries, then apply the stack with "
        "'Apply Control Stack'."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": CONTROL_INPUTS, "optional": {**cls.STACK_INPUT, **OPTIONAL_CONTROL_INPUTS}}

    def add(self, control_net, image, strength, start_percent, end_percent, control_mode,
            control_stack=None, mask=None, block_weights="", strength_schedule=None, latent_strengths=None,
            uncond_multiplier=1.0):
        from ..controlnet_core import comfy_control

        return self.extended(control_stack, strength, lambda: comfy_control.configured_control(
            control_net, image, ApplyOptions(
                strength, start_percent, end_percent, control_mode, mask, block_weights, strength_schedule,
                latent_strengths, uncond_multiplier,
            ),
        ))


class CNS_UnionStackEntry(_StackEntry):
    DESCRIPTION = (
        "Adds one ControlNet Union/ProMax with its Union conditions (fused in one pass, as 'Apply ControlNet Union' "
        "does) to a stack, with strength, range, mode, optional mask, block weights, strength schedule, latent "
        "strengths and uncond multiplier."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": UNION_CONTROL_INPUTS, "optional": {**cls.STACK_INPUT, **OPTIONAL_UNION_CONTROL_INPUTS}}

    def add(self, control_net, union_conditions, strength, start_percent, end_percent, control_mode,
            control_stack=None, mask=None, block_weights="", strength_schedule=None, latent_strengths=None,
            uncond_multiplier=1.0):
        from ..controlnet_core import comfy_control

        strength_applied = comfy_control.union_strength(union_conditions, strength)
        return self.extended(control_stack, strength_applied, lambda: comfy_control.configured_union_control(
            control_net, union_conditions, ApplyOptions(
                strength, start_percent, end_percent, control_mode, mask, block_weights, strength_schedule,
                latent_strengths, uncond_multiplier,
            ),
        ))


class CNS_ApplyControlStack:
    DESCRIPTION = (
        "Applies every control of a stack, in order, to the positive and negative conditioning, on top of "
        "any control already there. Equivalent to chaining one Apply ControlNet node per entry."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the controls.", "Negative conditioning with the controls.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **CONDITIONING_INPUTS,
                "control_stack": (STACK_TYPE, {"tooltip": "Controls built with 'Control Stack Entry' and 'Union Stack Entry' nodes."}),
            }
        }

    def apply(self, positive, negative, control_stack):
        from ..controlnet_core import comfy_control

        return comfy_control.apply_stack(positive, negative, control_stack)


NODE_CLASS_MAPPINGS = {
    "CNS_ControlStackEntry": CNS_ControlStackEntry,
    "CNS_UnionStackEntry": CNS_UnionStackEntry,
    "CNS_ApplyControlStack": CNS_ApplyControlStack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CNS_ControlStackEntry": "Control Stack Entry (ControlNet Suite)",
    "CNS_UnionStackEntry": "Union Stack Entry (ControlNet Suite)",
    "CNS_ApplyControlStack": "Apply Control Stack (ControlNet Suite)",
}
