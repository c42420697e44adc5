"""ControlNet Union benchmark: one Union model with one and with two condition maps, ours against
ComfyUI's own Union control object, in ComfyUI's sampler.

One process, one SDXL-topology U-Net and one ProMax-shaped Union ControlNet with random weights,
the same seeds, sampler, prompt embeddings and maps for every configuration:

- `none`: no control;
- `built-in, depth`: ComfyUI's Union object, its type set with Set Union ControlNet Type, applied
  with ControlNetApplyAdvanced; `built-in, depth + canny`: two of those chained, ComfyUI's way to
  give a Union two maps (the ControlNet runs twice per step);
- `<mode>, depth` and `<mode>, depth + canny chained`: ours (the same weights in our control
  object), applied the same way with our Apply ControlNet;
- `<mode>, depth + canny fused`: ours with Union Condition + Apply ControlNet Union, both maps
  fused in one pass (xinsir's multi-condition mode: the ControlNet runs once per step). It is
  the same task as the chained rows but not the same computation, so its latent differs.

ComfyUI's Union branch is 320 channels wide (hard-coded in comfy/cldm/cldm.py), so the models
have SDXL's widths and levels; `--depth reduced` (default) keeps 2 transformer blocks at the
deepest level instead of SDXL's 10, so that a CPU with 24 GB runs it (full SDXL fp32 is 10 GB
for the U-Net alone). ComfyUI's loader only recognises full-size Union files, so both control
objects are built in-process around the same weight tensors, each as its loader would build it.

Timing as bench/sampling.py: interleaved repeats, medians, overhead against the same repeat's
`none` run, and the time inside the controls measured directly.

    .venv/bin/python -m bench.union                          # CPU, reduced depth, fp32
    .venv/bin/python -m bench.union --device cuda --depth sdxl   # 512 px, 20 steps, fp16
    .venv/bin/python -m bench.union --forward                 # one ControlNet forward of each, no sampler

Benchmarks print; they assert nothing.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from controlnet_core.union import UNION_CONTROL_TYPES

from .sampling import (
    CFG_SCALE,
    CLOCKS,
    DTYPES,
    LATENT_TO_PIXELS,
    MIB,
    NONE,
    PROMPT_TOKENS,
    SAMPLER,
    SCHEDULER,
    SEED,
    Comfy,
    Config,
    Inputs,
    add_common_arguments,
    describe_machine,
    emit,
    log,
    medians,
    parse_common,
    peak_memory,
    randomize,
    time_runs,
    timing_cells,
    weight_bytes,
)

SDXL_WIDTH = 320  # SDXL's model_channels, and the width of ComfyUI's Union branch
SDXL_CHANNEL_MULT = (1, 2, 4)
SDXL_CONTEXT_DIM = 2048  # CLIP-L 768 + CLIP-G 1280
SDXL_POOLED_DIM = 1280  # CLIP-G pooled output
SDXL_ADM_CHANNELS = 2816  # pooled 1280 + 6 size embeddings × 256
# Transformer blocks per level: SDXL's, and a reduced set a 24 GB CPU machine holds in fp32.
DEPTHS = {"sdxl": (0, 2, 10), "reduced": (0, 2, 2)}
PROMAX_TYPES = 8
DEPTH, CANNY = "depth", "canny/lineart/anime_lineart/mlsd"
BUILTIN = "built-in"
ONE_MAP, CHAINED, FUSED = "depth", "depth + canny chained", "depth + canny fused"
MODES = ("balanced", "controlnet_more_important")


def sdxl_unet_config(depth: tuple[int, ...], dtype: torch.dtype) -> dict:
    """SDXL base's U-Net config (as comfy.supported_models.SDXL detects it) with `depth`
    transformer blocks per level."""
    return dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=SDXL_WIDTH, num_res_blocks=[2, 2, 2],
        channel_mult=list(SDXL_CHANNEL_MULT), transformer_depth=[d for d in depth for _ in range(2)],
        transformer_depth_output=[d for d in depth for _ in range(3)], transformer_depth_middle=depth[-1],
        context_dim=SDXL_CONTEXT_DIM, use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False,
        num_classes="sequential", adm_in_channels=SDXL_ADM_CHANNELS, num_head_channels=64, use_checkpoint=False,
        use_temporal_resblock=False, use_temporal_attention=False, dtype=dtype,
    )


def build_unet(comfy: Comfy, depth: tuple[int, ...], dtype: torch.dtype):
    mm = comfy.comfy.model_management
    config = comfy.comfy.supported_models.SDXL(sdxl_unet_config(depth, dtype))
    config.set_inference_dtype(dtype, None)
    base = randomize(config.get_model({}, ""), seed=1).eval()
    return comfy.comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def build_union_controls(comfy: Comfy, depth: tuple[int, ...], dtype: torch.dtype):
    """(ComfyUI's Union control object, ours) on the same weight tensors, each built as its
    loader builds it (comfy.controlnet.load_controlnet_state_dict; our comfy_control.load_control)."""
    mm, ops = comfy.comfy.model_management, comfy.comfy.ops
    load_device = mm.get_torch_device()
    compute_dtype = mm.unet_manual_cast(dtype, load_device)
    unet = sdxl_unet_config(depth, dtype)
    del unet["out_channels"]
    comfys_model = comfy.comfy.cldm.cldm.ControlNet(
        **unet, hint_channels=3, union_controlnet_num_control_type=PROMAX_TYPES,
        operations=ops.pick_operations(dtype, compute_dtype), device=mm.unet_offload_device(),
    )
    comfys_model = randomize(comfys_model, seed=5).eval()
    comfys = comfy.comfy.controlnet.ControlNet(comfys_model, load_device=load_device, manual_cast_dtype=compute_dtype)

    package = comfy.model_module.__name__.rsplit(".", 1)[0]  # the pack's controlnet_core, as ComfyUI imported it
    core = SimpleNamespace(**{name: importlib.import_module(f"{package}.{name}") for name in ("comfy_control", "config", "loader", "union")})
    weights = comfys_model.state_dict()
    shared = {k: tuple(v.shape) for k, v in weights.items() if not k.startswith(core.union.UNION_MODULES)}
    layers = sum(1 for k in weights if k.startswith("transformer_layes.") and k.endswith(".ln_1.weight"))
    types, token_channels = weights["task_embedding"].shape
    spec = core.union.UnionSpec(types, token_channels, layers, weights["control_add_embedding.linear_1.weight"].shape[1] // types)
    cfg = core.config.config_from_state_dict(shared, {"head_channels": 64}, "the benchmark")
    with torch.device("meta"):
        model = core.union.UnionControlNet(cfg, spec, ops=ops.pick_operations(dtype, compute_dtype, load_device=load_device), dtype=dtype)
    model.load_state_dict(weights, strict=True, assign=True)  # the same tensors: no second copy
    model.compute_dtype = compute_dtype
    ours = core.comfy_control.SuiteControl(core.loader.LoadedControlNet(model.eval(), "diffusers-union", "bench_union"), load_device)
    return comfys, ours


def make_inputs(comfy: Comfy, latent_side: int) -> Inputs:
    gen = torch.Generator().manual_seed(SEED)

    def conditioning():
        context = torch.randn(1, PROMPT_TOKENS, SDXL_CONTEXT_DIM, generator=gen)
        return [[context, {"pooled_output": torch.randn(1, SDXL_POOLED_DIM, generator=gen)}]]

    positive, negative = conditioning(), conditioning()
    side = latent_side * LATENT_TO_PIXELS
    maps = [torch.rand(1, side, side, 3, generator=gen) for _ in range(2)]  # depth, canny
    latent = torch.zeros(1, 4, latent_side, latent_side)
    return Inputs(positive, negative, maps, latent, comfy.comfy.sample.prepare_noise(latent, SEED))


def make_configs(comfy: Comfy, comfys, ours, inputs: Inputs, modes: list[str]) -> list[Config]:
    import comfy_extras.nodes_controlnet  # Set Union ControlNet Type (ComfyUI's extra nodes)

    set_type = comfy_extras.nodes_controlnet.SetUnionControlNetType().set_controlnet_type
    depth_map, canny_map = inputs.hints
    pairs = [(DEPTH, depth_map), (CANNY, canny_map)]

    def chained(apply, control_net, maps):
        positive, negative = inputs.positive, inputs.negative
        for control_type, image in maps:
            positive, negative = apply(positive, negative, set_type(control_net, control_type)[0], image)
        return positive, negative

    def builtin(positive, negative, control_net, image):
        return comfy.nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net, image, 1.0, 0.0, 1.0)

    configs = [Config(NONE, NONE, 0, inputs.positive, inputs.negative)]
    for name, maps in ((ONE_MAP, pairs[:1]), (CHAINED, pairs)):
        configs.append(Config(f"{BUILTIN}, {name}", BUILTIN, len(maps), *chained(builtin, comfys, maps), [comfys.control_model]))
    for mode in modes:
        def ours_apply(positive, negative, control_net, image, mode=mode):
            return comfy.node("CNS_ApplyControlNet").apply(positive, negative, control_net, image, 1.0, 0.0, 1.0, mode)

        for name, maps in ((ONE_MAP, pairs[:1]), (CHAINED, pairs)):
            configs.append(Config(f"{mode}, {name}", mode, len(maps), *chained(ours_apply, ours, maps), [ours.model]))
        conditions = None
        for control_type, image in pairs:
            (conditions,) = comfy.node("CNS_UnionCondition").add(image, control_type, 1.0, union_conditions=conditions)
        fused = comfy.node("CNS_ApplyControlNetUnion").apply(inputs.positive, inputs.negative, ours, conditions, 1.0, 0.0, 1.0, mode)
        configs.append(Config(f"{mode}, {FUSED}", mode, 2, *fused, [ours.model]))
    return configs


def time_forwards(comfys, ours, inputs: Inputs, repeats: int, clock) -> str:
    """One ControlNet forward of each model on the same CFG batch of 2 (one map, depth; ours
    with its fused hint cached as in sampling, ComfyUI's encoding the hint as at each step),
    interleaved, medians: the ControlNet alone, without the sampler around it."""
    latent_side = inputs.latent.shape[-1]
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(2, 4, latent_side, latent_side, generator=gen)
    timesteps = torch.full((2,), 500.0)
    context = torch.cat([inputs.positive[0][0], inputs.negative[0][0]])
    y = torch.randn(2, SDXL_ADM_CHANNELS, generator=gen)
    hint = inputs.hints[0].movedim(-1, 1)
    depth = [UNION_CONTROL_TYPES[DEPTH]]
    with torch.inference_mode():
        encoded = ours.model.encode_condition(hint, depth)
        runs = {
            "ours": lambda: ours.model(x, None, timesteps, context, y=y, encoded_hint=encoded, control_types=depth),
            BUILTIN: lambda: comfys.control_model(x=x, hint=hint.expand(2, -1, -1, -1), timesteps=timesteps, context=context, y=y, control_type=depth),
        }
        spent: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():
            run()  # warm-up
        for _ in range(repeats):
            for name, run in runs.items():
                start = clock()
                run()
                spent[name].append(clock() - start)
    return "one ControlNet forward, batch 2, median of {}: {}".format(
        repeats, ", ".join(f"{name} {statistics.median(t):.3f} s" for name, t in spent.items())
    )


def same_task_builtin(config: Config) -> str:
    """The built-in row doing the same task: one map, or two maps."""
    return f"{BUILTIN}, {ONE_MAP if config.controls == 1 else CHAINED}"


def report(configs, times, in_controls, memory, latents, device_line: str, args) -> str:
    base, overhead, inside = medians(configs, times, in_controls)
    lines = [
        f"machine: {device_line}",
        f"model: SDXL topology (width {SDXL_WIDTH}, transformer depth {'/'.join(map(str, args.depth_blocks))}), "
        f"ProMax-shaped Union; latent {args.latent}×{args.latent} ({args.latent * LATENT_TO_PIXELS} px), {args.steps} steps "
        f"{SAMPLER}/{SCHEDULER}, CFG {CFG_SCALE}, batch of 2, {args.dtype}, {args.repeats} interleaved repeats, medians of {args.clock} time",
        "overhead = run time − the same repeat's `none` run time; ÷ built-in: against the built-in row with as many maps",
        "",
        "| configuration | time (s) | × none | overhead (s) | overhead ÷ built-in's | inside controls (s) | inside ÷ built-in's "
        "| peak memory (MiB) | max \\|latent − built-in's\\| ÷ built-in's effect |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        reference = same_task_builtin(c)
        mem = f"{memory[c.name] / MIB:.0f}" if c.name in memory else "-"
        agreement = ""
        if c.kind == "balanced" and not c.name.endswith(FUSED):  # the same computation as the built-in
            effect = (latents[reference] - latents[NONE]).abs().max().item()
            agreement = f"{(latents[c.name] - latents[reference]).abs().max().item() / effect:.1e}"
        ours = c.kind not in (NONE, BUILTIN)
        lines.append(timing_cells(c.name, times, base, overhead, inside, reference if ours else None) + f" {mem} | {agreement} |")
    lines += ["", f"weights: U-Net {weight_bytes([args.unet]) / MIB:.0f} MiB, Union ControlNet "
              f"{weight_bytes(configs[1].control_models) / MIB:.0f} MiB (shared by every row that uses it)"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--depth", choices=tuple(DEPTHS), default="reduced",
                   help="transformer blocks per level: reduced (0/2/2, default) or sdxl (0/2/10)")
    p.add_argument("--modes", default=",".join(MODES), help=f"our control modes, comma-separated (default {','.join(MODES)})")
    p.add_argument("--forward", action="store_true", help="time one ControlNet forward of each model instead of sampling (CPU)")
    args = parse_common(p, argv)
    if args.forward and args.device != "cpu":
        p.error("--forward times the models where they are built, on the CPU")
    args.depth_blocks = DEPTHS[args.depth]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    with tempfile.TemporaryDirectory(prefix="cns_bench_") as folder:
        comfy = Comfy(args.device, Path(folder))
        log(f"building the Union ControlNet and the SDXL-topology U-Net (depth {args.depth}) ...")
        comfys, ours = build_union_controls(comfy, args.depth_blocks, dtype)
        inputs = make_inputs(comfy, args.latent)
        if args.forward:
            emit(time_forwards(comfys, ours, inputs, args.repeats, CLOCKS[args.clock]), args)
            return
        model = build_unet(comfy, args.depth_blocks, dtype)
        args.unet = model.model
        configs = make_configs(comfy, comfys, ours, inputs, args.mode_list)
        times, in_controls, latents = time_runs(comfy, model, configs, inputs, args.steps, args.repeats, args.device, log, CLOCKS[args.clock])
        memory = {} if args.no_memory else {c.name: peak_memory(comfy, model, c, inputs, args.steps, args.device) for c in configs}
        text = report(configs, times, in_controls, memory, latents, describe_machine(args.device), args)
    emit(text, args)


if __name__ == "__main__":
    main()
