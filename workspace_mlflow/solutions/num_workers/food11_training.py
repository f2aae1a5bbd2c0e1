"""What the three training scripts share: the config, the data, the model and the training loops.

Each script keeps its own copy of the steps you read in the lesson (two phases, early
stopping, what gets logged); this module holds the parts that are the same in all three.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import random
import shutil
import signal
import subprocess
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

# Every value a run depends on, in one place. Each one is logged with the run and can be
# changed for one run from the command line (`--total_epochs 2 --image_size 64`) without
# editing this file.
CONFIG = {
    "initial_epochs": 5,
    "total_epochs": 20,
    "patience": 5,
    "batch_size": 32,
    "lr": 1e-4,
    "fine_tune_lr": 1e-5,
    "model_architecture": "MobileNetV2",
    "dropout_probability": 0.5,
    "random_horizontal_flip": 0.5,
    "random_rotation": 15,
    "color_jitter_brightness": 0.2,
    "color_jitter_contrast": 0.2,
    "color_jitter_saturation": 0.2,
    "color_jitter_hue": 0.1,
    "image_size": 224,
    "num_workers": 16,
    "pretrained": True,
    "data_dir": os.environ.get("FOOD11_DATA_DIR", "Food-11"),
    "seed": 42,
}

SPLITS = ["training", "validation", "evaluation"]
CLASS_FOLDERS = [f"class_{i:02d}" for i in range(11)]  # Bread, Dairy product, ..., Vegetable/Fruit

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _to_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_config(defaults: dict, argv: list[str] | None = None, description: str | None = None) -> dict:
    """The config with any `--key value` overrides from the command line applied."""
    parser = argparse.ArgumentParser(description=description)
    for key, default in defaults.items():
        kind = _to_bool if isinstance(default, bool) else type(default)
        parser.add_argument(f"--{key}", type=kind, default=default, metavar=type(default).__name__.upper())
    config = vars(parser.parse_args(argv))
    if config["initial_epochs"] > config["total_epochs"]:
        parser.error("--initial_epochs cannot exceed --total_epochs")
    if min(config["batch_size"], config["image_size"], config["total_epochs"]) < 1:
        parser.error("--batch_size, --image_size and --total_epochs must be at least 1")
    return config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    # ROCm builds of PyTorch answer to torch.cuda as well.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_data(data_dir: str) -> None:
    """Stop with a clear message before training when the data directory is not usable."""
    problems, summary = [], []
    for split in SPLITS:
        folder = os.path.join(data_dir, split)
        if not os.path.isdir(folder):
            problems.append(f"no '{split}' split folder")
            continue
        photos = {name: len(glob.glob(os.path.join(folder, name, "*.jpg"))) for name in CLASS_FOLDERS}
        missing = [name for name in CLASS_FOLDERS if not os.path.isdir(os.path.join(folder, name))]
        empty = [name for name in CLASS_FOLDERS if name not in missing and photos[name] == 0]
        if missing:
            problems.append(f"{folder} lacks class folder(s) {', '.join(missing)}")
        if empty:
            problems.append(f"{folder}: no .jpg photos in {', '.join(empty)}")
        summary.append(f"{split:<11} {sum(photos.values()):>6} photos in {len(CLASS_FOLDERS)} classes")
    if problems:
        sys.exit(
            f"error: {data_dir} is not a usable Food-11 folder:\n  - " + "\n  - ".join(problems) + "\n"
            "Run notebook 03 to get the data, or point FOOD11_DATA_DIR (or --data_dir) at the folder that holds it."
        )
    print("\n".join(summary), flush=True)


def split_listing(data_dir: str, split: str):
    """One split's photos as a table, a row per photo (its path in the split, its size, its class
    folder), and the split's folder."""
    import pandas as pd

    folder = os.path.abspath(os.path.join(data_dir, split))
    photos = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))
    listing = pd.DataFrame({"photo": [os.path.relpath(p, folder) for p in photos],
                            "bytes": [os.path.getsize(p) for p in photos],
                            "label": [os.path.basename(os.path.dirname(p)) for p in photos]})
    return listing, folder


def split_dataset(data_dir: str, split: str):
    """One split as an MLflow dataset, to log with `mlflow.log_input`: named `food11-<split>`, its source
    the split's folder, its digest taken from the list of photos (so other photos, another digest)."""
    import warnings

    import mlflow.data

    listing, folder = split_listing(data_dir, split)
    with warnings.catch_warnings():  # MLflow 3.17 knows local folders under two names, and says which it took
        warnings.simplefilter("ignore")
        return mlflow.data.from_pandas(listing, source=folder, name=f"food11-{split}", targets="label")


def make_transforms(config: dict) -> tuple[transforms.Compose, transforms.Compose]:
    size = config["image_size"]
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = transforms.Compose([
        transforms.Resize(size),
        transforms.CenterCrop(size),
        transforms.RandomHorizontalFlip(p=config["random_horizontal_flip"]),
        transforms.RandomRotation(config["random_rotation"]),
        transforms.ColorJitter(
            brightness=config["color_jitter_brightness"],
            contrast=config["color_jitter_contrast"],
            saturation=config["color_jitter_saturation"],
            hue=config["color_jitter_hue"],
        ),
        transforms.ToTensor(),
        normalize,
    ])
    evaluate = transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(), normalize,
    ])
    return train, evaluate


def make_loaders(config: dict) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Training, validation and evaluation loaders over the Food-11 folders."""
    train_tf, eval_tf = make_transforms(config)
    train_set = datasets.ImageFolder(os.path.join(config["data_dir"], "training"), transform=train_tf)
    val_set = datasets.ImageFolder(os.path.join(config["data_dir"], "validation"), transform=eval_tf)
    test_set = datasets.ImageFolder(os.path.join(config["data_dir"], "evaluation"), transform=eval_tf)

    train_loader = DataLoader(
        train_set,
        batch_size=config["batch_size"],
        shuffle=True,
        num_workers=config["num_workers"],
    )
    val_loader = DataLoader(
        val_set,
        batch_size=config["batch_size"],
        shuffle=False,
        num_workers=config["num_workers"],
    )
    test_loader = DataLoader(
        test_set,
        batch_size=config["batch_size"],
        shuffle=False,
        num_workers=config["num_workers"],
    )
    return train_loader, val_loader, test_loader


def build_model(config: dict) -> nn.Module:
    """MobileNetV2 (ImageNet weights unless `--pretrained false`) with an 11-class head."""
    weights = models.MobileNet_V2_Weights.IMAGENET1K_V1 if config["pretrained"] else None
    try:
        model = models.mobilenet_v2(weights=weights)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        sys.exit(
            f"error: could not fetch the ImageNet weights for MobileNetV2 ({error}).\n"
            "Either run without them, starting from random weights (it learns slower):\n"
            f"    python {os.path.basename(sys.argv[0])} --pretrained false\n"
            f"or copy {os.path.basename(weights.url)} into {torch.hub.get_dir()}/checkpoints/ and run again."
        )
    model.classifier = nn.Sequential(
        nn.Dropout(config["dropout_probability"]),
        nn.Linear(model.last_channel, len(CLASS_FOLDERS)),
    )
    return model


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    for param in model.features.parameters():
        param.requires_grad = trainable


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_one_epoch(model, loader, criterion, optimizer, device) -> tuple[float, float]:
    """One pass over `loader` with weight updates; returns (mean loss, accuracy)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * labels.size(0)
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += labels.size(0)
    return total_loss / seen, correct / seen


@torch.no_grad()
def evaluate(model, loader, criterion, device) -> tuple[float, float]:
    """One pass over `loader` without updates; returns (mean loss, accuracy)."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        total_loss += criterion(outputs, labels).item() * labels.size(0)
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += labels.size(0)
    return total_loss / seen, correct / seen


NO_GPU_NOTE = "No GPU tool (nvidia-smi or rocm-smi) was found on this machine: training ran on the CPU.\n"


def gpu_info() -> str:
    """What `nvidia-smi` or `rocm-smi` says about the GPUs, or a note that there are none."""
    for command in (["nvidia-smi"], ["rocm-smi", "--showproductname", "--showmeminfo", "vram"]):
        if shutil.which(command[0]):
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as error:
                return f"`{' '.join(command)}` did not answer: {error}\n"
            return f"$ {' '.join(command)}\n{done.stdout}{done.stderr}"
    return NO_GPU_NOTE


class Interrupted(KeyboardInterrupt):
    """Raised on SIGTERM so it is handled like Ctrl+C."""


@contextlib.contextmanager
def run_ends_on_interrupt():
    """End the active MLflow run as KILLED on Ctrl+C or SIGTERM, FAILED on an error.

    Without it, MLflow's exit hook would mark an interrupted run FINISHED, or a killed
    process would leave it RUNNING forever.
    """
    import mlflow

    signalled = []

    def on_signal(signum, frame):
        signalled.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except BaseException as error:
        # Lightning turns Ctrl+C into SystemExit(1) after its own clean-up; the flag still tells.
        killed = signalled or isinstance(error, KeyboardInterrupt)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not cut this short
        mlflow.end_run(status="KILLED" if killed else "FAILED")
        if killed:
            print("\ninterrupted: the MLflow run was ended as KILLED", file=sys.stderr)
            sys.exit(130)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
