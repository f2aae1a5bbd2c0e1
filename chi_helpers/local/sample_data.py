"""A small Food-11-shaped data set for the local target and the tests.

Eleven classes, the three splits, real JPEG files named like the raw archive
(``<class>_<n>.jpg``) and then organized by the same code as the real data. Each class has
its own hue and shape, drawn at a random place and size over a noisy background, so a small
CNN learns it well above chance in a few epochs while no two photos are the same.
"""

from __future__ import annotations

import colorsys
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from chi_helpers import food11

# Photos per class in each split. Enough training batches per epoch for a MobileNetV2 from random
# weights to settle its BatchNorm statistics and learn within ten epochs, few enough to keep a
# CPU epoch at 32 px to a couple of seconds.
DEFAULT_PER_CLASS = {"training": 40, "validation": 5, "evaluation": 5}
DEFAULT_IMAGE_SIZE = 64
SHAPES = ("disc", "square", "stripes", "ring")


def _draw(rng: random.Random, class_index: int, size: int) -> Image.Image:
    hue = class_index / len(food11.CLASSES)
    background = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(rng.random(), 0.15, rng.uniform(0.3, 0.9)))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    color = tuple(
        int(255 * c)
        for c in colorsys.hsv_to_rgb((hue + rng.uniform(-0.02, 0.02)) % 1, rng.uniform(0.7, 1), rng.uniform(0.7, 1))
    )
    extent = rng.uniform(0.45, 0.8) * size
    x0 = rng.uniform(0, size - extent)
    y0 = rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    shape = SHAPES[class_index % len(SHAPES)]
    if shape == "disc":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "ring":
        draw.ellipse(box, outline=color, width=max(2, size // 12))
    else:
        step = max(4, size // 8)
        for x in range(int(x0), int(x0 + extent), 2 * step):
            draw.rectangle((x, y0, x + step, y0 + extent), fill=color)
    # Noise from the seeded generator (PIL's own noise is not reproducible).
    noise = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    return Image.blend(image, noise, rng.uniform(0.05, 0.2)).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_sample_dataset(
    root: str | Path,
    per_class: dict[str, int] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    organize: bool = True,
) -> dict[str, dict[str, int]] | None:
    """Write the raw layout under ``root``, then organize it (unless ``organize=False``).

    Refuses to write into a folder that already holds photos, so nothing stored is overwritten.
    Returns the verified counts when organized.
    """
    per_class = dict(DEFAULT_PER_CLASS if per_class is None else per_class)
    unknown = set(per_class) - set(food11.SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; the splits are {list(food11.SPLITS)}")
    if any(n < 1 for n in per_class.values()) or set(per_class) != set(food11.SPLITS):
        raise ValueError(f"give every split at least one photo per class, got {per_class}")
    root = Path(root)
    if root.exists() and any(root.rglob("*.jpg")):
        raise FileExistsError(f"{root} already holds photos; remove it or choose another folder")
    rng = random.Random(seed)
    for split, n in per_class.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for class_index in range(len(food11.CLASSES)):
            for i in range(n):
                _draw(rng, class_index, image_size).save(folder / f"{class_index}_{i}.jpg", quality=90)
    if not organize:
        return None
    food11.organize(root)
    return food11.verify(root)
