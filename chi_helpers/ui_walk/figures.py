"""The lesson's figures: a screenshot cropped to what matters, with a mark where the student looks.

The walk outlines the elements to look at in the page itself (a red frame drawn by CSS, so it follows
the element exactly), then takes a screenshot of a clip around them. Saved as WebP: a screen of flat
colours and text is a few tens of KB, where PNG would be several times that.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from chi_helpers.series import REPO_ROOT

SCREENS_DIR = REPO_ROOT / "docs" / "screens"
SUFFIX = ".webp"
MAX_BYTES = 300_000  # "a few hundred KB" at most: the pages must still load fast on a phone
# Drawn inside the element: table headers and tabs clip what is drawn outside them.
MARK_CSS = "outline: 3px solid #d62728 !important; outline-offset: -3px !important;"
PADDING = 32  # around the union of the marked elements, when no area is named
MIN_SIZE = (760, 420)  # enough of the screen around the marks for a student to find the place again


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float

    @classmethod
    def of(cls, found: dict) -> "Box":
        return cls(found["x"], found["y"], found["width"], found["height"])

    def union(self, other: "Box") -> "Box":
        x, y = min(self.x, other.x), min(self.y, other.y)
        right = max(self.x + self.width, other.x + other.width)
        bottom = max(self.y + self.height, other.y + other.height)
        return Box(x, y, right - x, bottom - y)

    def padded(self, by: float) -> "Box":
        return Box(self.x - by, self.y - by, self.width + 2 * by, self.height + 2 * by)

    def at_least(self, width: float, height: float) -> "Box":
        """Grown evenly around its middle to at least this size."""
        grow_x, grow_y = max(0.0, width - self.width) / 2, max(0.0, height - self.height) / 2
        return Box(self.x - grow_x, self.y - grow_y, self.width + 2 * grow_x, self.height + 2 * grow_y)

    def within(self, width: float, height: float) -> "Box":
        """This box moved back inside the viewport where it sticks out (keeping its size), then cut to it."""
        x = min(max(0.0, self.x), max(0.0, width - self.width))
        y = min(max(0.0, self.y), max(0.0, height - self.height))
        return Box(x, y, max(1.0, min(width, x + self.width) - x), max(1.0, min(height, y + self.height) - y))

    def clip(self) -> dict:
        return {"x": round(self.x), "y": round(self.y), "width": round(self.width), "height": round(self.height)}


def path_for(name: str, folder: Path = SCREENS_DIR) -> Path:
    return folder / f"{name}{SUFFIX}"


def save(png: bytes, path: Path, quality: int = 82) -> int:
    """Write a screenshot (PNG bytes) as WebP; returns its size in bytes."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "WEBP", quality=quality, method=6)
    data = buffer.getvalue()
    if len(data) > MAX_BYTES:
        raise ValueError(f"{path.name}: {len(data) // 1000} KB, over the {MAX_BYTES // 1000} KB a figure may weigh: "
                         "crop it to a smaller area")
    path.write_bytes(data)
    return len(data)
