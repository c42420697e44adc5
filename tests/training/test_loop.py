"""The training loop does what the paper's method says, measured on a tiny model."""

from __future__ import annotations

import pytest
import torch

from controlnet_core import load_controlnet
from controlnet_core.create import save_controlnet
from tests.training.tiny import DIFFUSERS_UNET, dataset, trainer
from training.loop import Trainer, TrainingOptions
from training.unet import DECODER_MODULES, control_dict


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def output_zero_convs(controlnet) -> list[torch.nn.Conv2d]:
    return [m[0] for m in controlnet.zero_convs] + [controlnet.middle_block_out[0]]


def test_one_step_changes_only_the_controlnet():
    run = trainer()
    base_before, control_before = clone_state(run.unet), clone_state(run.controlnet)

    run.train_step()

    base_after, control_after = run.unet.state_dict(), run.controlnet.state_dict()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)  # every locked tensor bit-identical
    changed = [k for k in control_before if not torch.equal(control_before[k], control_after[k])]
    assert any(k.startswith("zero_convs.") for k in changed) and any(k.startswith("middle_block_out.") for k in changed)
    assert set(run.trainable_parameters()) == {f"controlnet.{k}" for k, _ in run.controlnet.named_parameters()}


def test_new_controlnet_leaves_the_base_exactly_and_its_zero_convs_leave_zero_after_one_step():
    run = trainer()
    batch = run._sample()
    x_t = run.schedule.add_noise(batch["latents"], batch["noise"], batch["t"])
    with torch.no_grad():
        plain = run.unet(x_t, batch["t"], batch["contexts"])
        residuals = run.controlnet(x_t, batch["hints"], batch["t"], batch["contexts"])
        controlled = run.unet(x_t, batch["t"], batch["contexts"], control=control_dict(residuals))
    assert torch.equal(plain, controlled)  # step 0: the base model's output, exactly
    assert all(torch.count_nonzero(conv.weight) == 0 and torch.count_nonzero(conv.bias) == 0 for conv in output_zero_convs(run.controlnet))

    run.train_step()

    assert all(torch.count_nonzero(conv.weight) > 0 for conv in output_zero_convs(run.controlnet))


def test_loss_is_l2_on_the_noise():
    run = trainer(prompt_dropout=0.0)
    batch = run._sample()
    abar = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)[batch["t"]]
    x_t = (abar.sqrt()[:, None, None, None] * batch["latents"] + (1 - abar).sqrt()[:, None, None, None] * batch["noise"]).float()
    with torch.no_grad():
        # give the zero convs values so the control path contributes to the loss
        for conv in output_zero_convs(run.controlnet):
            conv.weight.normal_(0, 0.1)
        residuals = run.controlnet(x_t, batch["hints"], batch["t"], batch["contexts"])
        expected = ((run.unet(x_t, batch["t"], batch["contexts"], control=control_dict(residuals)) - batch["noise"]) ** 2).mean()
        loss = run.loss(batch)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=0)


def test_prompt_dropout_replaces_that_share_of_prompts_with_the_empty_one():
    data = dataset()
    drop = torch.tensor([True, False, True])
    batch = data.batch(torch.tensor([0, 1, 2]), drop)
    assert torch.equal(batch["contexts"][0], data.empty_context) and torch.equal(batch["contexts"][2], data.empty_context)
    assert torch.equal(batch["contexts"][1], data.contexts[1])

    run = trainer(prompt_dropout=0.5, batch_size=500)
    contexts = run._sample()["contexts"]
    dropped = sum(torch.equal(c, data.empty_context) for c in contexts)
    assert abs(dropped / 500 - 0.5) < 4 * (0.25 / 500) ** 0.5  # within 4 binomial standard deviations


def test_resume_continues_the_same_loss_curve(tmp_path):
    steps, interrupt = 6, 3
    uninterrupted = trainer(steps=steps)
    uninterrupted.run()

    first = trainer(steps=steps)
    first.run(until=interrupt, checkpoint_path=str(tmp_path / "train.ckpt"))
    resumed = trainer(steps=steps)  # a fresh process would rebuild the same base and ControlNet
    resumed.load_checkpoint(str(tmp_path / "train.ckpt"))
    resumed.run()

    assert resumed.step == steps and len(resumed.losses) == steps
    assert torch.allclose(torch.tensor(resumed.losses), torch.tensor(uninterrupted.losses), rtol=1e-5, atol=0)
    final, expected = resumed.controlnet.state_dict(), uninterrupted.controlnet.state_dict()
    assert all(torch.allclose(final[k], expected[k], rtol=1e-5, atol=1e-7) for k in expected)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    run = trainer(steps=2)
    path = tmp_path / "train.ckpt"
    run.run(until=1, checkpoint_path=str(path))
    before = path.read_bytes()

    def interrupted(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.run(until=2, checkpoint_path=str(path))

    assert path.read_bytes() == before  # the previous checkpoint, intact
    assert [p.name for p in tmp_path.iterdir()] == ["train.ckpt"]  # no temporary left behind
    assert torch.load(path, weights_only=True)["step"] == 1


def gradients_at_step(run: Trainer) -> dict[str, torch.Tensor]:
    """Run one optimizer step, returning the gradients the optimizer was given."""
    captured: dict[str, torch.Tensor] = {}
    step = run.optimizer.step

    def capturing_step(*args, **kwargs):
        captured.update({n: p.grad.clone() for n, p in run.trainable_parameters().items() if p.grad is not None})
        return step(*args, **kwargs)

    run.optimizer.step = capturing_step
    run.train_step()
    return captured


def test_gradient_accumulation_equals_one_large_batch():
    """Two batches of 2 accumulated give the gradient of one batch of the same 4 examples."""
    source = trainer()
    a, b = source._sample(), source._sample()
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    accumulated = trainer(gradient_accumulation=2)
    batches = iter([a, b])
    accumulated._sample = lambda: next(batches)
    large = trainer(batch_size=4)
    large._sample = lambda: both

    got, want = gradients_at_step(accumulated), gradients_at_step(large)

    assert set(got) == set(want) and any(torch.count_nonzero(g) for g in want.values())
    for name in want:
        assert (got[name] - want[name]).abs().max() <= 1e-5 * want[name].abs().max() + 1e-12, name
    assert accumulated.losses[0] == pytest.approx(large.losses[0], rel=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, checkpointed = trainer(), trainer(gradient_checkpointing=True)
    got, want = gradients_at_step(checkpointed), gradients_at_step(plain)
    assert checkpointed.losses == plain.losses
    for name in want:
        assert (got[name] - want[name]).abs().max() <= 1e-5 * want[name].abs().max() + 1e-12, name
    assert "forward" not in vars(checkpointed.unet.input_blocks[1])  # the blocks are restored afterwards


def test_small_scale_recipe_connects_only_the_middle_block_at_first():
    run = trainer(middle_only_steps=2)
    skip_convs = [m[0] for m in run.controlnet.zero_convs]

    run.train_step()
    run.train_step()
    assert all(torch.count_nonzero(conv.weight) == 0 for conv in skip_convs)  # not connected: no gradient
    assert torch.count_nonzero(run.controlnet.middle_block_out[0].weight) > 0

    run.train_step()  # step 3: every block connected
    assert all(torch.count_nonzero(conv.weight) > 0 for conv in skip_convs)


def test_large_scale_recipe_unlocks_the_decoder_late_at_its_own_learning_rate():
    run = trainer(unlock_decoder_at=2, decoder_learning_rate=1e-4)
    before = clone_state(run.unet)

    run.train_step()
    run.train_step()
    assert all(torch.equal(before[k], v) for k, v in run.unet.state_dict().items())  # locked for steps 1-2

    run.train_step()  # step 3: output_blocks and out train too
    after = run.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    decoder_weights = {k for k in before if k.startswith(DECODER_MODULES) and k.endswith("weight")}
    assert changed and all(k.startswith(DECODER_MODULES) for k in changed)  # the encoder stays locked
    assert decoder_weights <= changed
    assert [g["lr"] for g in run.optimizer.param_groups] == [1e-3, 1e-4]


def test_resume_after_the_decoder_was_unlocked(tmp_path):
    steps = 4
    uninterrupted = trainer(steps=steps, unlock_decoder_at=1, decoder_learning_rate=1e-4)
    uninterrupted.run()
    first = trainer(steps=steps, unlock_decoder_at=1, decoder_learning_rate=1e-4)
    first.run(until=2, checkpoint_path=str(tmp_path / "t.ckpt"))
    resumed = trainer(steps=steps, unlock_decoder_at=1, decoder_learning_rate=1e-4)
    resumed.load_checkpoint(str(tmp_path / "t.ckpt"))
    resumed.run()
    assert torch.allclose(torch.tensor(resumed.losses), torch.tensor(uninterrupted.losses), rtol=1e-5, atol=0)
    got, want = resumed.unet.state_dict(), uninterrupted.unet.state_dict()
    assert all(torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-7) for k in want)


def test_trained_controlnet_loads_in_our_loader_and_in_diffusers(tmp_path):
    from diffusers import ControlNetModel

    run = trainer(steps=2)
    run.run()
    path = tmp_path / "trained.safetensors"
    save_controlnet(run.controlnet, str(path))
    config_dir = tmp_path / "config"
    ControlNetModel(**{k: v for k, v in DIFFUSERS_UNET.items() if k != "up_block_types"}).save_config(config_dir)

    ours = load_controlnet(str(path)).model
    theirs = ControlNetModel.from_single_file(str(path), config=str(config_dir), local_files_only=True).eval()

    data = dataset()
    x, hint, context = data.latents[:2], data.hints[:2], data.contexts[:2]
    t = torch.tensor([900, 30])
    with torch.no_grad():
        trained = run.controlnet(x, hint, t, context)
        loaded = ours(x, hint, t, context)
        down, mid = theirs(x, t, context, hint, return_dict=False)
    assert all(torch.count_nonzero(r) > 0 for r in trained)
    assert all(torch.equal(a, b) for a, b in zip(trained, loaded))
    for a, b in zip(trained, [*down, mid]):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_bad_options_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="prompt_dropout must be between 0 and 1"):
        TrainingOptions(prompt_dropout=1.5)
    with pytest.raises(ValueError, match="mixed_precision='fp16' needs a CUDA device"):
        trainer(mixed_precision="fp16")
