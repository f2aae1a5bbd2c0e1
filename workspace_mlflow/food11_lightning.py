"""What the two Lightning scripts share: the Food-11 classifier as a LightningModule and its Trainer.

train_lightning.py trains it with no tracking; train_lightning_mlflow.py is the same with MLflow
autologging added (`diff train_lightning.py train_lightning_mlflow.py` shows only that). Lightning's
callbacks do what train_mlflow.py does by hand: freeze then unfreeze the backbone, stop early, keep
the best checkpoint.
"""

import os
import sys

import lightning as L
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, EarlyStopping, ModelCheckpoint
from torch import nn

from food11_training import CONFIG, build_model

# Lightning's backbone fine-tuning raises the backbone's learning rate as it goes, so it starts lower.
LIGHTNING_CONFIG = {**CONFIG, "fine_tune_lr": 1e-6, "devices": "auto"}


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


def make_trainer(config: dict) -> L.Trainer:
    """A Trainer on every GPU there is (one process per GPU), or the CPU, with the lesson's callbacks."""
    callbacks = [
        ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=1, filename="food11-{epoch}-{val_loss:.3f}"),
        EarlyStopping(monitor="val_loss", mode="min", patience=config["patience"]),
        BackboneFinetuning(unfreeze_backbone_at_epoch=config["initial_epochs"], backbone_initial_lr=config["fine_tune_lr"]),
    ]
    # A notebook's `!python` runs in a pseudo-terminal, where a progress bar would print every redraw.
    interactive = sys.stdout.isatty() and "JPY_PARENT_PID" not in os.environ
    if not interactive:
        callbacks.append(PrintEpochMetrics())
    return L.Trainer(
        max_epochs=config["total_epochs"],
        accelerator="auto",  # the GPUs when there are any, else the CPU
        devices=config["devices"],  # "auto": all of them; "2" on a CPU runs two processes, as on two GPUs
        callbacks=callbacks,
        enable_progress_bar=interactive,
        logger=False,  # no copy of the metrics on disk (the tracked script sends them to MLflow)
    )
