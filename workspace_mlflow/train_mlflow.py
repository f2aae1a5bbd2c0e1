"""Train the Food-11 classifier in plain PyTorch, tracked with MLflow.

Phase 1 trains a new classifier head on a frozen MobileNetV2; phase 2 fine-tunes the whole
network and stops early when validation loss stops improving. Compare with train.py:
`diff train.py train_mlflow.py` shows only what tracking adds.
"""

import time

import mlflow
import mlflow.pytorch
import torch
import torchvision
from mlflow.models import infer_signature
from torch import nn

from food11_training import (
    CONFIG,
    SPLITS,
    build_model,
    check_data,
    count_trainable,
    evaluate,
    gpu_info,
    make_loaders,
    parse_config,
    pick_device,
    run_ends_on_interrupt,
    seed_everything,
    set_backbone_trainable,
    split_dataset,
    train_one_epoch,
)

# What a deployment needs to load the logged model (without the "+cu..." build tag).
MODEL_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]


def main(config: dict) -> None:
    check_data(config["data_dir"])
    # The server comes from MLFLOW_TRACKING_URI; the run records the config and the hardware.
    mlflow.set_experiment("food11-classifier")
    mlflow.start_run(log_system_metrics=True)
    mlflow.log_text(gpu_info(), "gpu-info.txt")
    mlflow.log_params(config)
    # Which photos each split holds, and a digest of that list: the run's datasets.
    for split in SPLITS:
        mlflow.log_input(split_dataset(config["data_dir"], split), context=split)

    seed_everything(config["seed"])
    device = pick_device()
    print(f"training on {device}", flush=True)
    train_loader, val_loader, test_loader = make_loaders(config)
    model = build_model(config).to(device)
    criterion = nn.CrossEntropyLoss()

    def run_epoch(epoch: int, optimizer) -> dict:
        start = time.time()
        train_loss, train_accuracy = train_one_epoch(model, train_loader, criterion, optimizer, device)
        val_loss, val_accuracy = evaluate(model, val_loader, criterion, device)
        metrics = {
            "epoch_time": time.time() - start,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "trainable_params": count_trainable(model),
        }
        print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)
        # Queued, not sent: training goes on while a background thread talks to the server.
        mlflow.log_metrics(metrics, step=epoch, synchronous=False)
        return metrics

    # Phase 1: the ImageNet features stay frozen; only the new 11-class head learns.
    set_backbone_trainable(model, False)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=config["lr"])
    for epoch in range(config["initial_epochs"]):
        metrics = run_epoch(epoch, optimizer)

    # Phase 2: unfreeze everything and fine-tune gently; keep the best model, stop when
    # validation loss has not improved for `patience` epochs.
    set_backbone_trainable(model, True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["fine_tune_lr"])
    best_val_loss, epochs_without_improvement = float("inf"), 0
    for epoch in range(config["initial_epochs"], config["total_epochs"]):
        metrics = run_epoch(epoch, optimizer)
        if metrics["val_loss"] < best_val_loss:
            best_val_loss, epochs_without_improvement = metrics["val_loss"], 0
            torch.save(model.state_dict(), "food11.pth")
        else:
            epochs_without_improvement += 1
            if epochs_without_improvement >= config["patience"]:
                print(f"early stopping: no better val_loss for {config['patience']} epochs", flush=True)
                mlflow.log_metric("early_stopping_epoch", epoch)
                break

    # The best epoch's weights are the model we keep, so they are the ones tested.
    if best_val_loss < float("inf"):
        model.load_state_dict(torch.load("food11.pth"))
    test_loss, test_accuracy = evaluate(model, test_loader, criterion, device)
    print(f"test_loss {test_loss:.4g}, test_accuracy {test_accuracy:.4g}", flush=True)
    mlflow.log_metrics({"test_loss": test_loss, "test_accuracy": test_accuracy})

    # The model, once, with an example of what it takes (one photo, as the loaders make it) and
    # its signature: the shape and type of that input and of what it returns (a score per class).
    photo = test_loader.dataset[0][0].unsqueeze(0)  # one photo, without starting the loader's workers
    with torch.no_grad():
        scores = model(photo.to(device)).cpu()
    mlflow.pytorch.log_model(
        model,
        name="food11",
        serialization_format="pickle",  # loads with mlflow.pytorch.load_model at any batch size
        pip_requirements=MODEL_REQUIREMENTS,  # named, MLflow need not spend seconds guessing them
        input_example=photo.numpy(),
        signature=infer_signature(photo.numpy(), scores.numpy()),
    )
    mlflow.end_run()


if __name__ == "__main__":
    # Ctrl+C or SIGTERM ends the run as KILLED instead of leaving it RUNNING.
    with run_ends_on_interrupt():
        main(parse_config(CONFIG, description=__doc__))
