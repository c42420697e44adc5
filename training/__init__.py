"""Creating and training ControlNets with the paper's method (Zhang & Agrawala 2023, §3.3, §4).

Plain PyTorch; nothing here imports ComfyUI (nodes/training.py is the ComfyUI face).

    unet.py      a Stable Diffusion U-Net in the original layout that takes ControlNet residuals
    noise.py     the diffusion forward process and the training target
    data.py      datasets: folders of (image, condition, prompt) triples, encoded datasets
    loop.py      the training loop: L2 noise loss, prompt dropout, locked base, AdamW, recipes,
                 atomic resumable checkpoints
    plot.py      the loss curve (and any curve) as a PNG, with OpenCV only
    toy.py       the synthetic experiment that shows the method working on a CPU
    cli.py       `python -m training.cli create|train|toy`
"""
