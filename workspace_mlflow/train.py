"""Train the Food-11 classifier in plain PyTorch, with no tracking: the baseline.

Phase 1 trains a new classifier head on a frozen MobileNetV2; phase 2 fine-tunes the whole
network and stops early when validation loss stops improving. Compare with train_mlflow.py:
`diff train.py train_mlflow.py` shows only what tracking adds.
"""

import time

import torch
from torch import nn

from food11_training import (
    CONFIG,
    build_model,
    check_data,
    count_trainable,
    evaluate,
    make_loaders,
    parse_config,
    pick_device,
    seed_everything,
    set_backbone_trainable,
    train_one_epoch,
)


def main(config: dict) -> None:
    check_data(config["data_dir"])

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
                break

    # The best epoch's weights are the model we keep, so they are the ones tested.
    if best_val_loss < float("inf"):
        model.load_state_dict(torch.load("food11.pth"))
    test_loss, test_accuracy = evaluate(model, test_loader, criterion, device)
    print(f"test_loss {test_loss:.4g}, test_accuracy {test_accuracy:.4g}", flush=True)


if __name__ == "__main__":
    main(parse_config(CONFIG, description=__doc__))
