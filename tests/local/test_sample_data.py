"""The small Food-11-shaped data set: its shape, real JPEGs, and content a small CNN can learn."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from chi_helpers import food11
from chi_helpers.local import sample_data


def test_sample_has_the_food11_shape(tmp_path):
    counts = sample_data.make_sample_dataset(tmp_path / "Food-11", image_size=40)
    assert list(counts) == list(food11.SPLITS)
    for split, per_class in counts.items():
        assert list(per_class) == [f"class_{i:02d}" for i in range(11)]
        assert set(per_class.values()) == {sample_data.DEFAULT_PER_CLASS[split]}
    photo = next((tmp_path / "Food-11" / "validation" / "class_05").iterdir())
    assert photo.name.startswith("5_")  # the raw name survives organizing
    with Image.open(photo) as image:
        assert image.format == "JPEG" and image.size == (40, 40) and image.mode == "RGB"


def test_sample_can_stay_raw_for_the_organizer(tmp_path):
    assert sample_data.make_sample_dataset(tmp_path, organize=False) is None
    per_class = sample_data.DEFAULT_PER_CLASS["training"]
    assert len(list((tmp_path / "training").glob("*.jpg"))) == 11 * per_class
    assert food11.organize(tmp_path)["training"] == 11 * per_class


def test_sample_never_writes_over_stored_photos(tmp_path):
    sample_data.make_sample_dataset(tmp_path)
    before = sorted(tmp_path.rglob("*.jpg"))
    with pytest.raises(FileExistsError, match="already holds photos"):
        sample_data.make_sample_dataset(tmp_path, seed=5)
    assert sorted(tmp_path.rglob("*.jpg")) == before


@pytest.mark.parametrize("per_class", [{"training": 0, "validation": 1, "evaluation": 1}, {"training": 2, "test": 1}])
def test_sample_rejects_bad_counts(tmp_path, per_class):
    with pytest.raises(ValueError):
        sample_data.make_sample_dataset(tmp_path, per_class=per_class)


def test_same_seed_same_photos(tmp_path):
    sample_data.make_sample_dataset(tmp_path / "a", seed=3)
    sample_data.make_sample_dataset(tmp_path / "b", seed=3)
    a = (tmp_path / "a" / "training" / "class_02" / "2_0.jpg").read_bytes()
    assert a == (tmp_path / "b" / "training" / "class_02" / "2_0.jpg").read_bytes()


def test_a_small_cnn_learns_the_classes_well_above_chance(tmp_path):
    root = tmp_path / "Food-11"
    sample_data.make_sample_dataset(root, per_class={"training": 16, "validation": 2, "evaluation": 6}, image_size=32)
    to_tensor = transforms.ToTensor()
    train = DataLoader(datasets.ImageFolder(root / "training", to_tensor), batch_size=32, shuffle=True)
    test = DataLoader(datasets.ImageFolder(root / "evaluation", to_tensor), batch_size=64)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 11),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        for images, labels in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
    accuracy = correct / len(test.dataset)
    assert accuracy > 3 / 11, f"accuracy {accuracy:.2f} is not well above chance (1/11)"
