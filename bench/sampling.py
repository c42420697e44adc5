"""Sampling benchmark: what a ControlNet costs inside ComfyUI's sampler, ours against the built-in.

One process, one SD1.5-topology U-Net with random weights, the same seeds, sampler, prompt
embeddings and hint images for every configuration:

- `none`: no control (the baseline);
- `builtin×k`: ComfyUI's own ControlNet (ControlNetLoader + ControlNetApplyAdvanced), k chained;
- `<mode>×k`: ours (CNS_ControlNetLoader + Control Stack nodes) in each control mode, k stacked.

Each stacked control is a different ControlNet file with its own hint, as in real use. Runs are
interleaved (every repeat runs every configuration, in an order rotated per repeat) and the
figures are medians over the repeats; a configuration's overhead is the median over repeats of
its time minus the `none` time of the same repeat. Peak memory comes from a separate, untimed
run per configuration (the profiler would slow the timed runs): on a GPU the allocator's peak,
on the CPU the resident weights plus the peak of the tensor memory allocated while sampling.

Usage (from the repository root, with ComfyUI at $COMFYUI_PATH or ~/comfy/ComfyUI):

    .venv/bin/python -m bench.sampling --width full          # SD1.5 width on the CPU
    .venv/bin/python -m bench.sampling --width small --repeats 1 --steps 2   # a quick check
    .venv/bin/python -m bench.sampling --device cuda          # 512×512, 20 steps, fp16

`bench/run_sampling` runs the set quoted in bench/README.md. Benchmarks print; they assert nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from workflows import headless
from workflows.random_models import sd15_unet_config

REPO_ROOT = Path(__file__).resolve().parents[1]

MODES = ("balanced", "prompt_more_important", "controlnet_more_important", "cfg_resolution_weighting")
COND_ONLY_MODES = ("controlnet_more_important", "cfg_resolution_weighting")
BUILTIN = "builtin"
NONE = "none"
# Widths: SD1.5's 320 channels, and a narrow model (a multiple of 64: ComfyUI's built-in loader
# assumes 64-channel heads for shapes it does not recognise) that runs in seconds.
WIDTHS = {"small": 64, "full": 320}
SD15_CHANNEL_MULT = (1, 2, 4, 4)
SD15_CONTEXT_DIM = 768  # CLIP ViT-L
PROMPT_TOKENS = 77  # one CLIP chunk
LATENT_TO_PIXELS = 8
CFG_SCALE = 7.0
SAMPLER, SCHEDULER = "euler", "normal"
SEED = 0
# Defaults per device: a 32×32 latent (256 px) keeps a full-width CPU run in minutes; on a GPU
# the SD1.5 standard, 512×512 px at 20 steps in fp16.
DEFAULTS = {
    "cpu": dict(latent=32, steps=4, repeats=5, dtype="fp32"),
    "cuda": dict(latent=64, steps=20, repeats=5, dtype="fp16"),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIB = 2**20
# Acceptance lines of issue 5 (overhead ratios against the built-in).
BALANCED_TARGET = 0.9
COND_ONLY_TARGET = 0.55


# --- ComfyUI in-process ---------------------------------------------------------------------

def find_comfyui() -> Path:
    root, why_not = headless.find_comfyui()
    if root is None:
        raise SystemExit(f"{why_not}: set COMFYUI_PATH to its folder")
    return root


class Comfy:
    """ComfyUI booted in this process with the pack loaded through its custom-node loader."""

    def __init__(self, device: str, models_dir: Path):
        headless.import_comfyui(find_comfyui(), cpu=device == "cpu")
        import comfy.model_management
        import comfy.model_patcher
        import comfy.sample
        import comfy.supported_models
        import folder_paths
        import nodes

        self.comfy, self.nodes = comfy, nodes
        folder_paths.add_model_folder_path("controlnet", str(models_dir))
        loaded = asyncio.run(nodes.load_custom_node(str(REPO_ROOT), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
        if not loaded:
            raise SystemExit("ComfyUI could not import the pack (see the log above)")
        pack = sys.modules[str(REPO_ROOT).replace(".", "_x_")]
        self.model_module = importlib.import_module(f"{pack.__name__}.controlnet_core.model")
        self.config_module = importlib.import_module(f"{pack.__name__}.controlnet_core.config")

    def node(self, name: str) -> Any:
        return self.nodes.NODE_CLASS_MAPPINGS[name]()


# --- the model, the ControlNet files, the inputs ----------------------------------------------

def unet_config(width: int, dtype: torch.dtype) -> dict:
    """SD1.5's U-Net (4 levels, 2 ResBlocks each, attention on the first three) at `width`."""
    return {**sd15_unet_config(width, SD15_CHANNEL_MULT, SD15_CONTEXT_DIM), "dtype": dtype}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The tests' random-weight recipe (tests/core/tiny.py; activations stay unit-sized), loaded
    by path: ComfyUI's own `tests` package shadows ours on sys.path."""
    spec = importlib.util.spec_from_file_location("cns_bench_tiny", REPO_ROOT / "tests" / "core" / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    return tiny.randomize(module, seed)


def build_unet(comfy: Comfy, width: int, dtype: torch.dtype) -> Any:
    mm = comfy.comfy.model_management
    config = comfy.comfy.supported_models.SD15(unet_config(width, dtype))
    config.set_inference_dtype(dtype, None)
    base = randomize(config.get_model({}, ""), seed=1).eval()
    return comfy.comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def write_controlnets(comfy: Comfy, width: int, dtype: torch.dtype, count: int, folder: Path) -> list[str]:
    """`count` random ControlNets of the U-Net's shape, original layout, in the U-Net's dtype."""
    from safetensors.torch import save_file

    names = []
    for i in range(count):
        model = randomize(comfy.model_module.ControlNet(comfy.config_module.sd_config(model_channels=width, channel_mult=SD15_CHANNEL_MULT)), seed=100 + i)
        name = f"bench_controlnet_{width}_{i}.safetensors"
        save_file({f"control_model.{k}": v.to(dtype).contiguous() for k, v in model.state_dict().items()}, folder / name)
        names.append(name)
        del model
    return names


@dataclass
class Inputs:
    positive: list
    negative: list
    hints: list[torch.Tensor]  # ComfyUI IMAGEs, one per stacked control
    latent: torch.Tensor
    noise: torch.Tensor


def make_inputs(comfy: Comfy, latent_side: int, count: int) -> Inputs:
    gen = torch.Generator().manual_seed(SEED)
    positive = [[torch.randn(1, PROMPT_TOKENS, SD15_CONTEXT_DIM, generator=gen), {}]]
    negative = [[torch.randn(1, PROMPT_TOKENS, SD15_CONTEXT_DIM, generator=gen), {}]]
    side = latent_side * LATENT_TO_PIXELS
    hints = [torch.rand(1, side, side, 3, generator=gen) for _ in range(count)]
    latent = torch.zeros(1, 4, latent_side, latent_side)
    return Inputs(positive, negative, hints, latent, comfy.comfy.sample.prepare_noise(latent, SEED))


# --- configurations -----------------------------------------------------------------------------

@dataclass
class Config:
    name: str
    kind: str  # NONE, BUILTIN or a control mode
    controls: int
    positive: list = field(repr=False, default_factory=list)
    negative: list = field(repr=False, default_factory=list)
    control_models: list = field(repr=False, default_factory=list)  # torch modules, for weights and counts


def make_configs(comfy: Comfy, files: list[str], inputs: Inputs, modes: list[str], stacks: list[int]) -> list[Config]:
    configs = [Config(NONE, NONE, 0, inputs.positive, inputs.negative)]
    builtin_nets = [comfy.nodes.ControlNetLoader().load_controlnet(f)[0] for f in files]
    our_nets = [comfy.node("CNS_ControlNetLoader").load(f)[0] for f in files]
    for k in stacks:
        positive, negative = inputs.positive, inputs.negative
        for net, hint in zip(builtin_nets[:k], inputs.hints):
            positive, negative = comfy.nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, net, hint, 1.0, 0.0, 1.0)
        configs.append(Config(f"{BUILTIN}×{k}", BUILTIN, k, positive, negative, [n.control_model for n in builtin_nets[:k]]))
    for mode in modes:
        for k in stacks:
            stack = None
            for net, hint in zip(our_nets[:k], inputs.hints):
                (stack,) = comfy.node("CNS_ControlStackEntry").add(net, hint, 1.0, 0.0, 1.0, mode, control_stack=stack)
            positive, negative = comfy.node("CNS_ApplyControlStack").apply(inputs.positive, inputs.negative, stack)
            configs.append(Config(f"{mode}×{k}", mode, k, positive, negative, [n.loaded.model for n in our_nets[:k]]))
    return configs


# --- measuring ----------------------------------------------------------------------------------

def sample(comfy: Comfy, model: Any, config: Config, inputs: Inputs, steps: int) -> torch.Tensor:
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return comfy.comfy.sample.sample(
            model, inputs.noise, steps, CFG_SCALE, SAMPLER, SCHEDULER, config.positive, config.negative,
            inputs.latent, seed=SEED, disable_pbar=True,
        )


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def outermost_controls(config: Config) -> list:
    """The control objects the sampler calls (each calls the ones chained before it);
    positive and negative share them."""
    found: list = []
    for _, options in config.positive + config.negative:
        control = options.get("control")
        if control is not None and all(control is not f for f in found):
            found.append(control)
    return found


@contextlib.contextmanager
def time_in_controls(config: Config, clock: Callable[[], float], device: str, spent: list[float]):
    """Adds the time spent inside the controls' get_control, the ControlNet work of a step,
    to spent[0]. Measured directly, it is not the difference of two noisy run times."""
    controls = outermost_controls(config)
    for control in controls:
        def timed(*args, _inner=control.get_control, **kwargs):
            synchronize(device)
            start = clock()
            try:
                return _inner(*args, **kwargs)
            finally:
                synchronize(device)
                spent[0] += clock() - start
        control.get_control = timed  # an instance attribute shadows the method
    try:
        yield
    finally:
        for control in controls:
            del control.get_control


def time_runs(comfy, model, configs, inputs, steps, repeats, device, log, clock=time.perf_counter):
    """(run times, time inside the controls, sampled latents) per configuration, times one entry
    per repeat. Every repeat runs every configuration; the order rotates so none always runs
    first. `clock`: wall time, or the process's CPU time (steadier where other jobs take the
    cores; with several threads it also counts their idle spinning)."""
    times: dict[str, list[float]] = {c.name: [] for c in configs}
    in_controls: dict[str, list[float]] = {c.name: [] for c in configs}
    # warm-up: loads models, fills caches, picks kernels; its results are compared in the report
    latents = {c.name: sample(comfy, model, c, inputs, steps).float().cpu() for c in configs}
    for r in range(repeats):
        shift = r % len(configs)
        for c in configs[shift:] + configs[:shift]:
            spent = [0.0]
            with time_in_controls(c, clock, device, spent):
                synchronize(device)
                start = clock()
                sample(comfy, model, c, inputs, steps)
                synchronize(device)
                times[c.name].append(clock() - start)
            in_controls[c.name].append(spent[0])
        log(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    return times, in_controls, latents


def weight_bytes(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def peak_memory(comfy, model, config, inputs, steps, device) -> int:
    """Bytes: on a GPU the allocator's peak with only this configuration's models loaded; on the
    CPU the weights of the U-Net and the controls plus the peak tensor memory while sampling."""
    if device == "cuda":
        comfy.comfy.model_management.unload_all_models()
        comfy.comfy.model_management.soft_empty_cache()
        torch.cuda.reset_peak_memory_stats()
        sample(comfy, model, config, inputs, steps)
        return torch.cuda.max_memory_allocated()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sample(comfy, model, config, inputs, steps)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return weight_bytes([model.model] + config.control_models) + peak


def count_work(comfy, model, config, inputs, steps) -> dict[str, int]:
    """Calls and batch rows of the ControlNets and their hint encoders over one sampling run;
    rows are counted where they enter the ControlNet and where they enter its first
    cross-attention (ours runs CFG's cond and uncond rows of one latent as one until there)."""
    counts = {"forward calls": 0, "forward rows": 0, "cross-attention rows": 0, "hint encodes": 0, "hint rows": 0}

    def counter(calls: str | None, rows: str) -> Callable:
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("x", kwargs.get("hint"))
            if calls:
                counts[calls] += 1
            counts[rows] += x.shape[0]
        return hook

    handles = []
    for m in config.control_models:
        first_cross_attention = next(sub for name, sub in m.named_modules() if name.endswith("attn2"))
        handles.append(m.register_forward_pre_hook(counter("forward calls", "forward rows"), with_kwargs=True))
        handles.append(first_cross_attention.register_forward_pre_hook(counter(None, "cross-attention rows"), with_kwargs=True))
        handles.append(m.input_hint_block.register_forward_pre_hook(counter("hint encodes", "hint rows"), with_kwargs=True))
    try:
        sample(comfy, model, config, inputs, steps)
    finally:
        for h in handles:
            h.remove()
    return counts


def profile_config(comfy, model, config, inputs, steps, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        sample(comfy, model, config, inputs, steps)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --- report -------------------------------------------------------------------------------------

def medians(configs, times, in_controls) -> tuple[float, dict[str, float], dict[str, float]]:
    """The `none` runs' median time; per configuration, the median overhead (run time − the same
    repeat's `none` time) and the median time inside the controls."""
    none = times[NONE]
    overhead = {c.name: statistics.median(t - n for t, n in zip(times[c.name], none)) for c in configs}
    inside = {c.name: statistics.median(in_controls[c.name]) for c in configs}
    return statistics.median(none), overhead, inside


def timing_cells(name: str, times, base: float, overhead, inside, reference: str | None) -> str:
    """A report row's columns up to "inside ÷ built-in's": time, × none, overhead, time inside the
    controls, the last two against `reference` (the built-in row doing the same task; None for
    rows that are not ours)."""
    t = statistics.median(times[name])
    vs = f"{overhead[name] / overhead[reference]:.2f}" if reference else ""
    inside_vs = f"{inside[name] / inside[reference]:.2f}" if reference else ""
    return f"| {name} | {t:.2f} | {t / base:.2f} | {overhead[name]:.2f} | {vs} | {inside[name]:.2f} | {inside_vs} |"


def report(configs, times, in_controls, memory, counts, device_line: str, args) -> str:
    base, overhead, inside = medians(configs, times, in_controls)
    lines = [
        f"machine: {device_line}",
        f"model: SD1.5 topology, width {args.width_channels}, latent {args.latent}×{args.latent} "
        f"({args.latent * LATENT_TO_PIXELS} px), {args.steps} steps {SAMPLER}/{SCHEDULER}, CFG batch of 2, "
        f"{args.dtype}, {args.repeats} interleaved repeats, medians of {args.clock} time",
        "overhead = run time − the same repeat's `none` run time; inside controls = time spent in the controls' "
        "get_control (the ControlNet work, measured directly)",
        "",
        "| configuration | time (s) | × none | overhead (s) | overhead ÷ built-in's | inside controls (s) "
        "| inside ÷ built-in's | peak memory (MiB) | of which control weights | of which activations |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        builtin = f"{BUILTIN}×{c.controls}" if c.kind not in (NONE, BUILTIN) else None
        mem = activations = "-"
        if c.name in memory:
            mem = f"{memory[c.name] / MIB:.1f}"
            activations = f"{(memory[c.name] - weight_bytes([args.unet] + c.control_models)) / MIB:.1f}"
        lines.append(
            timing_cells(c.name, times, base, overhead, inside, builtin)
            + f" {mem} | {weight_bytes(c.control_models) / MIB:.1f} | {activations} |"
        )
    if counts:
        lines += ["", "work per sampling run (ControlNet forward calls / batch rows in / rows from the first "
                  "cross-attention; hint encoder calls / rows):"]
        lines += [
            f"  {name}: {n['forward calls']} / {n['forward rows']} / {n['cross-attention rows']}; "
            f"{n['hint encodes']} / {n['hint rows']}"
            for name, n in counts.items()
        ]
    lines += ["", "issue 5 targets (on the overhead; the same ratio from the time inside the controls in brackets):"]
    lines += check_targets(configs, overhead, inside, memory, args, spread_of_stacking(configs, times, in_controls))
    return "\n".join(lines)


def spread_of_stacking(configs, times, in_controls) -> dict[str, str]:
    """For the built-in and each mode run with both 1 and 3 controls: three ÷ one within each
    repeat, as min–max (median), on the overhead and inside the controls. A repeat runs both
    side by side, so the spread of these ratios shows the noise that a ratio of medians hides."""
    none = times[NONE]
    names = {c.name for c in configs}
    out = {}
    for kind in [BUILTIN, *MODES]:
        one, three = f"{kind}×1", f"{kind}×3"
        if not {one, three} <= names:
            continue
        overhead = [(t3 - n) / (t1 - n) for t1, t3, n in zip(times[one], times[three], none)]
        inside = [i3 / i1 for i1, i3 in zip(in_controls[one], in_controls[three])]
        out[kind] = "; per repeat " + ", ".join(
            f"{label} {min(r):.2f}–{max(r):.2f} (median {statistics.median(r):.2f})"
            for label, r in (("overhead", overhead), ("inside", inside))
        )
    return out


def encoded_hint_bytes(config: Config, args) -> int:
    """What our controls of `config` keep from step to step besides their weights: the encoded
    hint, model_channels × latent² each (the price of encoding it once per run), in the dtype
    each computes in (fp32 on a CPU for fp16 weights: ComfyUI casts them per layer)."""
    return sum(args.width_channels * args.latent**2 * m.dtype.itemsize for m in config.control_models)


def check_targets(configs, overhead, inside, memory, args, spread: dict[str, str]) -> list[str]:
    names = {c.name for c in configs}
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"  [{'ok' if ok else 'MISSED'}] {text}")

    def ratio(a: str, b: str) -> tuple[float, str]:
        return overhead[a] / overhead[b], f"{overhead[a] / overhead[b]:.2f}× ({inside[a] / inside[b]:.2f}×)"

    if {"balanced×1", f"{BUILTIN}×1"} <= names:
        value, text = ratio("balanced×1", f"{BUILTIN}×1")
        line(value <= BALANCED_TARGET, f"balanced, 1 control: overhead {text} the built-in's (≤ {BALANCED_TARGET})")
    for mode in COND_ONLY_MODES:
        if {f"{mode}×1", f"{BUILTIN}×1"} <= names:
            value, text = ratio(f"{mode}×1", f"{BUILTIN}×1")
            line(value <= COND_ONLY_TARGET, f"{mode}, 1 control: overhead {text} the built-in's (≤ {COND_ONLY_TARGET})")
    if {f"{BUILTIN}×1", f"{BUILTIN}×3"} <= names:  # for comparison, no target
        out.append(f"  [    ] built-in, 3 chained: overhead {ratio(f'{BUILTIN}×3', f'{BUILTIN}×1')[1]} one control's"
                   f"{spread[BUILTIN]}")
    for mode in MODES:
        one, three = f"{mode}×1", f"{mode}×3"
        if {one, three} <= names:
            value, text = ratio(three, one)
            line(value <= 3.0, f"{mode}, 3 stacked: overhead {text} one control's (≤ 3){spread[mode]}")
            if one in memory and three in memory:
                # No activations or residuals may be held per stacked control: the growth is at
                # most the extra controls' weights plus their encoded hints (named, not hidden).
                by_config = {c.name: c for c in configs}
                growth = memory[three] - memory[one]
                weights = weight_bytes(by_config[three].control_models) - weight_bytes(by_config[one].control_models)
                hints = encoded_hint_bytes(by_config[three], args) - encoded_hint_bytes(by_config[one], args)
                line(growth <= weights + hints, f"{mode}, 3 stacked: peak memory +{growth / MIB:.2f} MiB over 1 control; "
                     f"their extra weights {weights / MIB:.2f} MiB + their encoded hints {hints / MIB:.2f} MiB")
    return out


def balanced_against_builtin(latents: dict[str, torch.Tensor], stacks: list[int]) -> list[str]:
    """Balanced mode computes what the built-in computes, so their sampled latents should agree
    to rounding. Printed as the largest difference over the largest change the built-in's
    controls make to the latent (0: identical); the tests assert the equality, this shows how
    close it stays over a whole run on the benchmark's device and dtype."""
    out = []
    for k in stacks:
        ours, builtin = latents.get(f"balanced×{k}"), latents.get(f"{BUILTIN}×{k}")
        if ours is not None and builtin is not None:
            effect = (builtin - latents[NONE]).abs().max().item()
            difference = (ours - builtin).abs().max().item()
            out.append(f"  {k} control{'s' if k > 1 else ''}: {difference:.3g} ÷ {effect:.3g} = {difference / effect:.2e}")
    title = "balanced against the built-in, sampled latents: max |ours − built-in| ÷ max |built-in − none|"
    return [title, *out] if out else [f"{title}: not run (needs balanced among --modes)"]


def describe_machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


# --- main ---------------------------------------------------------------------------------------

def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options every sampling benchmark here takes (this one and bench/union.py)."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="cpu (default), cuda, or auto (cuda when present)")
    p.add_argument("--latent", type=int, help="latent side (default: 32 on the CPU, 64 = 512 px on a GPU)")
    p.add_argument("--steps", type=int, help="sampling steps (default: 4 on the CPU, 20 on a GPU)")
    p.add_argument("--repeats", type=int, help="timed repeats of every configuration (default 5)")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="weights and compute (default: fp32 CPU, fp16 GPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall time (default) or the process's CPU time (CPU only; steadier on a shared machine)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--out", type=Path, help="also write the report to this file")


def parse_common(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parsed arguments with the device resolved and its defaults filled in."""
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--width", default="small", help="model channels: small (64), full (320, SD1.5) or a number")
    p.add_argument("--stacks", default="1,2,3", help="numbers of stacked controls, comma-separated")
    p.add_argument("--modes", default=",".join(MODES), help="our control modes, comma-separated")
    p.add_argument("--counts", action="store_true", help="also count ControlNet calls and rows per run")
    p.add_argument("--profile", metavar="CONFIG", help="print torch.profiler's op table for one configuration, e.g. balanced×1")
    args = parse_common(p, argv)
    args.width_channels = WIDTHS.get(args.width) or int(args.width)
    args.stack_list = sorted({int(s) for s in args.stacks.split(",") if s.strip()})
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.mode_list) - set(MODES)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    return args


def log(text: str) -> None:
    """Progress, on stderr (the report goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def emit(text: str, args: argparse.Namespace) -> None:
    """The report on stdout, and in --out's file when given."""
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]

    with tempfile.TemporaryDirectory(prefix="cns_bench_") as folder:
        comfy = Comfy(args.device, Path(folder))
        log(f"building the U-Net and {max(args.stack_list)} ControlNets at width {args.width_channels} ...")
        model = build_unet(comfy, args.width_channels, dtype)
        args.unet = model.model
        files = write_controlnets(comfy, args.width_channels, dtype, max(args.stack_list), Path(folder))
        inputs = make_inputs(comfy, args.latent, max(args.stack_list))
        configs = make_configs(comfy, files, inputs, args.mode_list, args.stack_list)

        if args.profile:
            chosen = [c for c in configs if c.name == args.profile]
            if not chosen:
                raise SystemExit(f"no configuration '{args.profile}'; there are {', '.join(c.name for c in configs)}")
            sample(comfy, model, chosen[0], inputs, args.steps)  # warm-up
            print(profile_config(comfy, model, chosen[0], inputs, args.steps))
            return

        times, in_controls, latents = time_runs(comfy, model, configs, inputs, args.steps, args.repeats, args.device, log, CLOCKS[args.clock])
        memory = {} if args.no_memory else {c.name: peak_memory(comfy, model, c, inputs, args.steps, args.device) for c in configs}
        counts = {c.name: count_work(comfy, model, c, inputs, args.steps) for c in configs if c.controls} if args.counts else {}
        text = report(configs, times, in_controls, memory, counts, describe_machine(args.device), args)
        text += "\n\n" + "\n".join(balanced_against_builtin(latents, args.stack_list))
    emit(text, args)


if __name__ == "__main__":
    main()
