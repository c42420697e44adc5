"""Our apply and stack nodes composed with Advanced-ControlNet (Kosinkadink/ComfyUI-Advanced-ControlNet)
chains in the same conditioning, checked residual by residual while ComfyUI samples.

Every control in a conditioning calls the one before it and adds its residuals to those, so a
chain of ACN and ControlNet Suite controls, in any order, must hand the U-Net exactly the sum of
what each part gives alone: nobody's residuals dropped, nobody's counted twice.

Advanced-ControlNet is found at $ADVANCED_CONTROLNET_PATH, ~/comfy/extra_nodes/ComfyUI-Advanced-ControlNet,
or in the ComfyUI checkout's custom_nodes/; it is loaded with ComfyUI's own custom-node loader.
It is not a dependency of the pack and nothing fetches it: where it is absent (CI has no network)
every test here skips, saying where it looked. ACN 1.5.7 and later declare `requires-comfyui >= 0.3.68`
(they call ComfyUI ops that 0.3.64 lacks; ACN's V3-API rewrite does not load in 0.3.64 at all); with
an older ComfyUI the tests skip and name the version to use instead: ACN 1.5.6 (commit 2bde95a,
2025-08-06), the newest that declares no such requirement.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
import torch

from .conftest import COMFYUI
from .test_control_object import prepared, step_inputs

ACN_FOLDER_NAME = "ComfyUI-Advanced-ControlNet"
ACN_MARKER = Path("adv_control") / "control.py"  # present in every ACN release with the Advanced nodes
ACN_LOADER = "ACN_ControlNetLoaderAdvanced"
ACN_APPLY = "ACN_AdvancedControlNetApply_v2"  # the current node ...
ACN_APPLY_DEPRECATED = "ACN_AdvancedControlNetApply"  # ... and the older id saved workflows still use
NEWEST_ACN_FOR_OLD_COMFYUI = "ACN 1.5.6 (commit 2bde95a)"

# |chain − Σ parts| ≤ 1e-5 · (largest part, per residual): the parts run the same networks on the
# same inputs, so only float rounding separates them, far below any part's effect.
RELATIVE_TO_EFFECT = 1e-5
# Each part must move the residuals visibly, or a dropped part would go unnoticed.
MIN_PART = 1e-3
STEPS = 3
# Where the ACN control's range ends in the three-layer chain: it is active for some steps of the
# run and not others, so the chain is checked both with and without it.
PARTIAL_END = 0.5


def find_advanced_controlnet() -> tuple[Path | None, str]:
    """(ACN folder, '') or (None, why not)."""
    candidates = [
        ("$ADVANCED_CONTROLNET_PATH", os.environ.get("ADVANCED_CONTROLNET_PATH") or None),
        (f"~/comfy/extra_nodes/{ACN_FOLDER_NAME}", Path.home() / "comfy" / "extra_nodes" / ACN_FOLDER_NAME),
    ]
    custom_nodes = COMFYUI / "custom_nodes" if COMFYUI is not None else None
    if custom_nodes is not None and custom_nodes.is_dir():
        # the registry installs it lower-cased
        matches = [p for p in sorted(custom_nodes.iterdir()) if p.name.lower() == ACN_FOLDER_NAME.lower()]
        candidates.append(("ComfyUI's custom_nodes/", matches[0] if matches else custom_nodes / ACN_FOLDER_NAME))
    for _, candidate in candidates:
        if candidate and (Path(candidate) / ACN_MARKER).is_file():
            return Path(candidate).resolve(), ""
    tried = ", ".join(f"{label} ({path or 'not set'})" for label, path in candidates)
    return None, f"Advanced-ControlNet not found (optional; CI has no copy); looked at {tried}"


def declared_requirement(acn: Path) -> tuple[str, str]:
    """(ACN's version, the ComfyUI versions its pyproject declares it needs, '' when none). Read
    with a pattern, not tomllib, which Python 3.10 lacks."""
    pyproject = acn / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    requires = re.search(r'^requires-comfyui\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return (version.group(1) if version else "unknown"), (requires.group(1) if requires else "")


@pytest.fixture(scope="session")
def acn(request):
    """ComfyUI's node mappings, with Advanced-ControlNet's nodes loaded by ComfyUI's loader."""
    folder, why_not = find_advanced_controlnet()
    if folder is None:
        pytest.skip(why_not)  # before booting ComfyUI: nothing here can run
    host = request.getfixturevalue("host")
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    import comfyui_version

    version, requires = declared_requirement(folder)
    if requires and Version(comfyui_version.__version__) not in SpecifierSet(requires):
        pytest.skip(
            f"Advanced-ControlNet {version} at {folder} needs ComfyUI {requires}, this checkout is "
            f"{comfyui_version.__version__}: use {NEWEST_ACN_FOR_OLD_COMFYUI} or a newer ComfyUI"
        )
    mappings = host.nodes.NODE_CLASS_MAPPINGS
    if ACN_LOADER not in mappings:
        loaded = asyncio.run(host.nodes.load_custom_node(str(folder), ignore=set(mappings)))
        assert loaded, f"ComfyUI could not load Advanced-ControlNet {version} from {folder} (see the log above)"
    missing = [name for name in (ACN_LOADER, ACN_APPLY, ACN_APPLY_DEPRECATED) if name not in mappings]
    assert not missing, f"Advanced-ControlNet {version} at {folder} registered no {missing}"
    return mappings


# --- the layers of a chain: (label, function from (positive, negative) to the same with its control) ---

def acn_layer(host, acn, files, node=ACN_APPLY, end_percent=1.0):
    control_net = acn[ACN_LOADER]().load_controlnet(files.second)[0]

    def apply(positive, negative):
        out = acn[node]().apply_controlnet(positive, negative, control_net, host.wide_image, 0.7, 0.0, end_percent)
        return out[0], out[1]  # the deprecated node also returns model_opt

    return f"ACN ({node}, end {end_percent})", apply


def ours_node_layer(host, files):
    control_net = host.suite_controlnet(files.original)

    def apply(positive, negative):
        return host.node("CNS_ApplyControlNet").apply(positive, negative, control_net, host.image, 0.8, 0.0, 1.0, "balanced")

    return "our apply node", apply


def ours_stack_layer(host, files):
    entry = host.node("CNS_ControlStackEntry")
    (stack,) = entry.add(host.suite_controlnet(files.original), host.image, 0.8, 0.0, 1.0, "prompt_more_important")
    # cond-only mode: its residuals fill the conditional rows of ACN's full cond+uncond batch
    (stack,) = entry.add(
        host.suite_controlnet(files.second), host.wide_image, 0.6, 0.0, 1.0, "controlnet_more_important", control_stack=stack
    )

    def apply(positive, negative):
        return host.node("CNS_ApplyControlStack").apply(positive, negative, stack)

    return "our stack", apply


CHAINS = {
    "ACN, then our apply node": lambda h, a, f: [acn_layer(h, a, f), ours_node_layer(h, f)],
    "ACN, then our stack": lambda h, a, f: [acn_layer(h, a, f), ours_stack_layer(h, f)],
    "our apply node, then ACN": lambda h, a, f: [ours_node_layer(h, f), acn_layer(h, a, f)],
    "our stack, then ACN": lambda h, a, f: [ours_stack_layer(h, f), acn_layer(h, a, f)],
    "our stack, ACN (deprecated node, ends at half), our apply node": lambda h, a, f: [
        ours_stack_layer(h, f), acn_layer(h, a, f, ACN_APPLY_DEPRECATED, PARTIAL_END), ours_node_layer(h, f)
    ],
}


# --- residual dicts ----------------------------------------------------------------------------

KEYS = ("input", "middle", "output")


def add(total: dict | None, part: dict | None) -> dict | None:
    """Two ComfyUI control dicts added index by index, None meaning zero."""
    if part is None:
        return total
    if total is None:
        return {k: list(part.get(k, [])) for k in KEYS}
    out = {}
    for key in KEYS:
        a, b = total.get(key, []), part.get(key, [])
        out[key] = [
            (x if y is None else y if x is None else x + y)
            for x, y in (((a[i] if i < len(a) else None), (b[i] if i < len(b) else None)) for i in range(max(len(a), len(b))))
        ]
    return out


def cloned(control: dict | None) -> dict | None:
    return None if control is None else {k: [None if t is None else t.clone() for t in control.get(k, [])] for k in KEYS}


def largest(parts: list[dict | None], key: str, index: int) -> float:
    sizes = [p[key][index].abs().max().item() for p in parts if p is not None and index < len(p[key]) and p[key][index] is not None]
    return max(sizes, default=0.0)


def missing_parts(got: dict, parts: list[dict | None], labels: list[str]) -> list[str]:
    """Which parts the chain's residuals lack: got ≈ Σ parts without them (for the failure message)."""
    missing = []
    for label, part in zip(labels, parts):
        if part is None:
            continue
        others = None
        for other in parts:
            if other is not part:
                others = add(others, other)
        if others is not None and all(
            g is not None and o is not None and torch.allclose(g, o, rtol=0, atol=1e-6 + RELATIVE_TO_EFFECT * o.abs().max().item())
            for key in KEYS
            for g, o in zip(got[key], others[key])
        ):
            missing.append(label)
    return missing


# --- sampling with the residuals captured --------------------------------------------------------

def sample_and_capture(host, combined: tuple[list, list], alone: list[tuple[list, list]]):
    """Sample `combined`; at each step record what the chain's top control returned, what the
    U-Net received, and what each part alone returns on the same inputs."""
    top = combined[0][0][1]["control"]
    assert combined[1][0][1]["control"] is top  # positive and negative share the chain: one batch
    part_controls = [prepared(host, positive[0][1]["control"]) for positive, _ in alone]

    steps, received = [], []
    chain_get_control = top.get_control

    def capture(x_noisy, t, cond, batched_number, transformer_options):
        out = chain_get_control(x_noisy, t, cond, batched_number, transformer_options)
        with torch.no_grad():
            parts = [cloned(c.get_control(x_noisy, t, cond, batched_number, transformer_options)) for c in part_controls]
        steps.append((out, cloned(out), parts))
        return out

    unet = host.model.model.diffusion_model
    unet_forward = unet.forward

    def forward(*args, **kwargs):
        received.append(kwargs.get("control"))
        return unet_forward(*args, **kwargs)

    top.get_control, unet.forward = capture, forward
    try:
        host.sample(*combined, steps=STEPS)
    finally:
        top.get_control = chain_get_control
        del unet.forward
        for control in part_controls:
            control.cleanup()
    assert len(steps) == STEPS, "the sampler did not call the chain's control once per step"
    assert [id(r) for r in received] == [id(out) for out, _, _ in steps], "the U-Net did not receive the chain's residuals"
    return [(got, parts) for _, got, parts in steps]


@pytest.mark.parametrize("chain", list(CHAINS))
def test_chain_hands_the_unet_the_sum_of_its_parts(host, files, acn, chain):
    labels, layers = zip(*CHAINS[chain](host, acn, files))
    combined = (host.positive, host.negative)
    for layer in layers:
        combined = layer(*combined)
    alone = [layer(host.positive, host.negative) for layer in layers]

    captured = sample_and_capture(host, combined, alone)
    for step, (got, parts) in enumerate(captured):
        expected = None
        for part in parts:
            expected = add(expected, part)
        assert expected is not None, f"step {step}: no part gave residuals"
        for label, part in zip(labels, parts):
            if part is not None:
                assert all(t.abs().max() > MIN_PART for k in KEYS for t in part[k] if t is not None), (
                    f"step {step}: {label} alone gives trivially small residuals, the check would prove nothing"
                )
        assert got is not None, f"step {step}: the chain gave no residuals"
        for key in KEYS:
            assert len(got[key]) == len(expected[key]), f"step {step}: {key} has {len(got[key])} residuals, expected {len(expected[key])}"
            for i, (g, e) in enumerate(zip(got[key], expected[key])):
                scale = largest(parts, key, i)
                error = (g - e).abs().max().item()
                assert error <= RELATIVE_TO_EFFECT * scale, (
                    f"step {step}, {key}[{i}]: |chain − Σ parts| = {error:.3g} > {RELATIVE_TO_EFFECT} × {scale:.3g}; "
                    f"the chain lacks: {missing_parts(got, parts, labels) or 'no single part (wrong sum)'}"
                )
    if chain.startswith("our stack, ACN (deprecated node, ends at half)"):
        acn_steps = [parts[1] is not None for _, parts in captured]
        assert any(acn_steps) and not all(acn_steps), f"ACN active at steps {acn_steps}: the range was not exercised"


# --- ControlNets crossing between the packs' apply nodes -----------------------------------------

def step_residuals(host, positive: list) -> dict:
    """The residuals a conditioning's control gives at one step (cond + uncond batch)."""
    control = prepared(host, positive[0][1]["control"])
    x, sigma, cond = step_inputs(host)
    try:
        with torch.no_grad():
            return cloned(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]}))
    finally:
        control.cleanup()


@pytest.mark.parametrize("loader", ["ours", "ACN"])
def test_a_controlnet_gives_the_same_residuals_through_either_packs_apply_node(host, files, acn, loader):
    """Our ControlNet in ACN's apply node and ACN's in ours (balanced, the only mode for another
    loader's ControlNet) act as in their own pack's node: same network, same hint, same weights."""
    control_net = host.suite_controlnet(files.original) if loader == "ours" else acn[ACN_LOADER]().load_controlnet(files.original)[0]
    hint = (host.wide_image, 0.7, 0.0, 1.0)  # image, strength, start, end
    through_acn = step_residuals(host, acn[ACN_APPLY]().apply_controlnet(host.positive, host.negative, control_net, *hint)[0])
    through_ours = step_residuals(
        host, host.node("CNS_ApplyControlNet").apply(host.positive, host.negative, control_net, *hint, "balanced")[0]
    )
    for key in KEYS:
        assert len(through_ours[key]) == len(through_acn[key]), key
        for i, (o, a) in enumerate(zip(through_ours[key], through_acn[key])):
            assert a.abs().max() > MIN_PART, f"{key}[{i}] is trivially small"
            assert (o - a).abs().max().item() <= RELATIVE_TO_EFFECT * a.abs().max().item(), f"{key}[{i}]"


# --- Advanced-ControlNet's uncond_multiplier ---------------------------------------------------------

ACN_SOFT_WEIGHTS = "ACN_ScaledSoftControlNetWeights"
# (ACN's base_multiplier, our mode with the same weights): base^(12−i) per residual
SOFT_WEIGHT_MODES = [(1.0, "balanced"), (0.825, "prompt_more_important")]


@pytest.mark.parametrize("base_multiplier, mode", SOFT_WEIGHT_MODES)
@pytest.mark.parametrize("uncond_multiplier", [0.0, 0.4])
def test_uncond_multiplier_gives_the_residuals_of_acns_soft_weights(host, files, acn, base_multiplier, mode, uncond_multiplier):
    """ACN's Scaled Soft Weights node (its uncond_multiplier) into its apply node's
    weights_override, against our apply node's mode and uncond_multiplier, on one ControlNet."""
    control_net = acn[ACN_LOADER]().load_controlnet(files.original)[0]
    hint = (host.wide_image, 0.7, 0.0, 1.0)  # image, strength, start, end
    weights, _ = acn[ACN_SOFT_WEIGHTS]().load_weights(base_multiplier, uncond_multiplier=uncond_multiplier)
    through_acn = step_residuals(
        host, acn[ACN_APPLY]().apply_controlnet(host.positive, host.negative, control_net, *hint, weights_override=weights)[0]
    )
    through_ours = step_residuals(host, host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, host.suite_controlnet(files.original), *hint, mode, uncond_multiplier=uncond_multiplier
    )[0])
    for key in KEYS:
        assert len(through_ours[key]) == len(through_acn[key]), key
        for i, (o, a) in enumerate(zip(through_ours[key], through_acn[key])):
            scale = a[:1].abs().max().item()  # the cond row (step_residuals: cond, then uncond)
            assert scale > MIN_PART, f"{key}[{i}] is trivially small"
            assert (o - a).abs().max().item() <= RELATIVE_TO_EFFECT * scale, f"{key}[{i}]"
