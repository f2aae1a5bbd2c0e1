"""Train the Food-11 classifier with Lightning, with no tracking: see that it works first.

The same model and data as train.py; the module and the Trainer are in food11_lightning.py. On a
node with two GPUs Lightning trains on both (DDP): it starts one process per GPU, each running this
whole script. train_lightning_mlflow.py is this script with MLflow autologging added.
"""

from food11_lightning import LIGHTNING_CONFIG, Food11Classifier, make_trainer
from food11_training import check_data, make_loaders, parse_config, seed_everything


def main(config: dict) -> None:
    check_data(config["data_dir"])
    seed_everything(config["seed"])
    train_loader, val_loader, test_loader = make_loaders(config)
    module = Food11Classifier(config)
    trainer = make_trainer(config)

    trainer.fit(module, train_loader, val_loader)
    trainer.test(module, test_loader)


if __name__ == "__main__":
    main(parse_config(LIGHTNING_CONFIG, description=__doc__))
