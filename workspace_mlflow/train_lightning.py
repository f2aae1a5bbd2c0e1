"""Train the Food-11 classifier with Lightning; MLflow autologging records the run.

The same model and data as train_mlflow.py. Lightning's callbacks do what that script does by
hand (freeze then unfreeze the backbone, early stopping, keep the best checkpoint), and
`mlflow.pytorch.autolog()` logs whatever the module logs with `self.log`, the optimizer, the
callbacks' settings and the model. On a node with two GPUs Lightning trains on both (DDP): one
process per GPU, and only the first (rank 0) owns the MLflow run.
"""

import sys

import lightning as L
import mlflow
import mlflow.pytorch
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, EarlyStopping, ModelCheckpoint
from torch import nn

from food11_training import (
    CONFIG,
    build_model,
    check_data,
    gpu_info,
    make_loaders,
    parse_config,
    run_ends_on_interrupt,
    seed_everything,
)

# Lightning's backbone fine-tuning raises the backbone's learning rate as it goes, so it starts lower.
LIGHTNING_CONFIG = {**CONFIG, "fine_tune_lr": 1e-6}


class Food11Classifier(L.LightningModule):
    def __init__(self, config: dict):
        super().__init__()
        self.model = build_model(config)
        self.backbone = self.model.features  # the part BackboneFinetuning freezes, then unfreezes
        self.lr = config["lr"]
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, images):
        return self.model(images)

    def _step(self, batch, stage: str):
        images, labels = batch
        outputs = self(images)
        loss = self.criterion(outputs, labels)
        accuracy = (outputs.argmax(1) == labels).float().mean()
        # on_epoch: one value per epoch, averaged over batches (and over GPUs with sync_dist).
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}_accuracy", accuracy, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        # Only the head at first; BackboneFinetuning adds the backbone when it unfreezes it.
        return torch.optim.Adam(self.model.classifier.parameters(), lr=self.lr)


class PrintEpochMetrics(L.Callback):
    """One line per epoch, for where no progress bar can draw (a notebook's `!python`, a log file)."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            metrics = sorted((k, float(v)) for k, v in trainer.callback_metrics.items())
            print(f"epoch {trainer.current_epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics), flush=True)


def main(config: dict) -> None:
    check_data(config["data_dir"])
    seed_everything(config["seed"])
    train_loader, val_loader, test_loader = make_loaders(config)
    module = Food11Classifier(config)

    callbacks = [
        ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=1, filename="food11-{epoch}-{val_loss:.3f}"),
        EarlyStopping(monitor="val_loss", mode="min", patience=config["patience"]),
        BackboneFinetuning(unfreeze_backbone_at_epoch=config["initial_epochs"], backbone_initial_lr=config["fine_tune_lr"]),
    ]
    interactive = sys.stdout.isatty()
    if not interactive:
        callbacks.append(PrintEpochMetrics())
    trainer = L.Trainer(
        max_epochs=config["total_epochs"],
        accelerator="auto",  # the GPUs when there are any, else the CPU
        devices="auto",
        callbacks=callbacks,
        enable_progress_bar=interactive,
        logger=False,  # MLflow records the metrics; no second copy on disk
    )

    # With two GPUs this script runs once per GPU. Only rank 0 talks to MLflow, or there would be two runs.
    if trainer.global_rank == 0:
        mlflow.set_experiment("food11-classifier")
        mlflow.pytorch.autolog()
        mlflow.end_run()  # a run left open by an interrupted session would block start_run
        mlflow.start_run(log_system_metrics=True)
        mlflow.log_text(gpu_info(), "gpu-info.txt")
        mlflow.log_params(config)  # autolog records the optimizer and callbacks; these are the rest

    trainer.fit(module, train_loader, val_loader)
    trainer.test(module, test_loader)

    if trainer.global_rank == 0:
        mlflow.end_run()


if __name__ == "__main__":
    # Ctrl+C or SIGTERM ends the run as KILLED instead of leaving it RUNNING.
    with run_ends_on_interrupt():
        main(parse_config(LIGHTNING_CONFIG, description=__doc__))
