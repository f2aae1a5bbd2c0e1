"""Train the Food-11 classifier with Lightning; MLflow autologging records the run.

`diff train_lightning.py train_lightning_mlflow.py` shows what tracking adds: the experiment,
`mlflow.pytorch.autolog()` (whatever the module logs with `self.log`, the optimizer's and the
callbacks' settings, the model), and a run with system metrics around the training. On a node
with two GPUs Lightning starts one process per GPU, and each one runs this whole script.
"""

import mlflow
import mlflow.pytorch

from food11_lightning import LIGHTNING_CONFIG, Food11Classifier, make_trainer
from food11_training import check_data, make_loaders, parse_config, seed_everything
from food11_training import gpu_info, run_ends_on_interrupt


def main(config: dict) -> None:
    check_data(config["data_dir"])
    seed_everything(config["seed"])
    train_loader, val_loader, test_loader = make_loaders(config)
    module = Food11Classifier(config)
    trainer = make_trainer(config)

    if trainer.global_rank == 0:
        mlflow.set_experiment("food11-classifier")
        mlflow.pytorch.autolog()
        mlflow.start_run(log_system_metrics=True)
        mlflow.log_text(gpu_info(), "gpu-info.txt")

    trainer.fit(module, train_loader, val_loader)
    trainer.test(module, test_loader)

    if trainer.global_rank == 0:
        mlflow.end_run()


if __name__ == "__main__":
    # Ctrl+C or SIGTERM ends the run as KILLED instead of leaving it RUNNING.
    with run_ends_on_interrupt():
        main(parse_config(LIGHTNING_CONFIG, description=__doc__))
