"""The Food-11 data set: its layout, organizing a raw copy, checking a data directory, downloading it.

Standard library only: the node's one-shot data container runs this very file
(``python -m chi_helpers.food11 organize /data/Food-11``) with nothing else installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

CLASSES = [
    "Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
    "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit",
]
# Split folder -> number of photos in the full data set.
SPLITS = {"training": 9866, "validation": 3430, "evaluation": 3347}  # 16,643 in all

DOWNLOAD_URL = "https://nyu.box.com/shared/static/m5kvcl25hfpljul3elhu6xz8y2w61op4.zip"

# A raw photo is "<class index>_<n>.jpg", lying directly in its split folder.
RAW_NAME = re.compile(r"^(\d+)_(\d+)\.jpe?g$", re.IGNORECASE)
PHOTO_SUFFIXES = {".jpg", ".jpeg"}


class DataLayoutError(Exception):
    """A data directory is not what the training scripts can read; the message says what to do."""


def class_folder(index: int) -> str:
    return f"class_{index:02d}"


CLASS_FOLDERS = [class_folder(i) for i in range(len(CLASSES))]


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def organize(root: str | os.PathLike) -> dict[str, int]:
    """Move each split's loose ``<class>_<n>.jpg`` photos into ``class_00`` ... ``class_10``.

    Safe to run again: photos already in class folders are left where they are, so a second
    run moves nothing. Every name is checked before the first move, so a bad tree is left as it was.
    Returns the number of photos moved per split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"{root} does not exist or is not a folder.")
    splits = [root / s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise DataLayoutError(
            f"{root} holds none of the split folders {', '.join(SPLITS)}: "
            "point at the folder the Food-11 archive unpacked into."
        )
    plan: list[tuple[Path, Path]] = []
    problems = []
    for split in splits:
        for photo in _photos(split):
            match = RAW_NAME.match(photo.name)
            if not match or int(match.group(1)) >= len(CLASSES):
                problems.append(f"{photo} is not named <class 0-10>_<n>.jpg")
                continue
            plan.append((photo, split / class_folder(int(match.group(1))) / photo.name))
    if problems:
        shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
        raise DataLayoutError(f"{len(problems)} photo(s) cannot be sorted, nothing was moved:\n  {shown}")
    for split in splits:
        for name in CLASS_FOLDERS:
            (split / name).mkdir(exist_ok=True)
    moved = {split.name: 0 for split in splits}
    for source, target in plan:
        if target.exists():
            raise DataLayoutError(f"{target} already exists; {source} was not moved over it.")
        source.rename(target)
        moved[source.parent.name] += 1
    return moved


def verify(root: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Check that ``root`` has every split with every class folder holding photos.

    Returns the photo count per split and class; raises DataLayoutError naming every problem.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(
            f"Data directory {root} does not exist. Set FOOD11_DATA_DIR (or pass --data_dir) to the "
            "Food-11 folder, or make the small local data set with "
            f"`python -m chi_helpers data sample {root}`."
        )
    problems: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            problems.append(f"no '{split}' split folder (expected {', '.join(SPLITS)} under {root})")
            continue
        loose = _photos(folder)
        if loose:
            problems.append(
                f"{folder} holds {len(loose)} photo(s) not sorted into class folders: "
                f"run `python -m chi_helpers data organize {root}`"
            )
        present = {p.name for p in folder.iterdir() if p.is_dir()}
        missing = [c for c in CLASS_FOLDERS if c not in present]
        unknown = sorted(present - set(CLASS_FOLDERS))
        if missing:
            problems.append(f"{folder} lacks class folder(s) {', '.join(missing)}")
        if unknown:
            problems.append(
                f"{folder} has folder(s) {', '.join(unknown)} that are not class_00 ... class_10 "
                "(ImageFolder would take them as extra classes)"
            )
        counts[split] = {}
        for name in CLASS_FOLDERS:
            if name in present:
                n = len(_photos(folder / name))
                counts[split][name] = n
                if n == 0:
                    problems.append(f"{folder / name} holds no photos")
    if problems:
        raise DataLayoutError(f"{root} is not a usable Food-11 directory:\n  - " + "\n  - ".join(problems))
    return counts


def describe(counts: dict[str, dict[str, int]]) -> str:
    """One line per split: how many photos, in how many classes."""
    return "\n".join(
        f"{split:<11} {sum(per_class.values()):>6} photos in {len(per_class)} classes"
        for split, per_class in counts.items()
    )


def is_complete(root: str | os.PathLike, expected: dict[str, int] = SPLITS) -> bool:
    """True when ``root`` holds the whole organized data set (what the data container checks first)."""
    try:
        counts = verify(root)
    except DataLayoutError:
        return False
    return all(sum(counts[s].values()) == n for s, n in expected.items())


def download(url: str, dest: str | os.PathLike, *, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` with a progress line, into a temporary name first.

    A download that stops early leaves no file under ``dest``; the archive is checked as a
    readable zip before it is moved into place.
    """
    dest = Path(dest)
    partial = dest.with_name(dest.name + ".part")
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        last = 0.0
        while block := response.read(chunk):
            out.write(block)
            done += len(block)
            now = time.monotonic()
            if now - last > 2:
                last = now
                share = f" of {total / 1e6:.0f} MB ({100 * done / total:.0f}%)" if total else ""
                print(f"[{now - start:6.1f}s] downloaded {done / 1e6:.0f} MB{share}", flush=True)
    if total and done != total:
        partial.unlink()
        raise OSError(f"download of {url} stopped at {done} of {total} bytes; run it again")
    try:
        with zipfile.ZipFile(partial) as archive:
            broken = archive.testzip()
    except zipfile.BadZipFile as error:
        broken = f"not a readable zip: {error}"
    if broken:
        partial.unlink()
        raise OSError(f"{url} arrived damaged ({broken}); run it again")
    partial.rename(dest)
    print(f"[{time.monotonic() - start:6.1f}s] {dest} complete ({done / 1e6:.0f} MB)", flush=True)
    return dest


def unpack(archive: str | os.PathLike, into: str | os.PathLike) -> None:
    """Unpack the Food-11 archive into ``into`` (which then holds the split folders)."""
    into = Path(into)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        # The archive may wrap the splits in a top folder; strip it so splits land in `into`.
        top = {n.split("/", 1)[0] for n in names}
        prefix = top.pop() + "/" if len(top) == 1 and not (top & set(SPLITS)) else ""
        for info in zf.infolist():
            rel = info.filename[len(prefix):] if prefix else info.filename
            if not rel or rel.startswith("__MACOSX") or info.is_dir():
                continue
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def fetch(
    root: str | os.PathLike, url: str = DOWNLOAD_URL, expected: dict[str, int] = SPLITS
) -> dict[str, dict[str, int]]:
    """Download, unpack and organize Food-11 into ``root``; do nothing when it is already complete.

    ``expected`` is the photo count per split that makes it complete (the real data set's by default).
    """
    root = Path(root)
    if is_complete(root, expected):
        print(f"{root} already holds all {sum(expected.values())} photos: nothing to do.")
        return verify(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = download(url, root / "Food-11.zip")
    print(f"unpacking {archive} ...", flush=True)
    unpack(archive, root)
    archive.unlink()
    moved = organize(root)
    print("organized: " + ", ".join(f"{s} {n}" for s, n in moved.items()))
    counts = verify(root)
    if not is_complete(root, expected):
        found = {s: sum(c.values()) for s, c in counts.items()}
        raise DataLayoutError(f"{root} holds {found} photos per split after unpacking, expected {expected}")
    return counts


def _counts(text: str) -> dict[str, int]:
    try:
        counts = {split: int(n) for split, _, n in (part.partition("=") for part in text.split(","))}
    except ValueError:
        counts = {}
    if sorted(counts) != sorted(SPLITS):
        raise argparse.ArgumentTypeError(f"name each of {', '.join(SPLITS)} once with a count, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chi_helpers.food11", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["organize", "verify", "fetch"])
    parser.add_argument("root", help="the Food-11 folder (holds training/, validation/, evaluation/)")
    parser.add_argument("--url", default=DOWNLOAD_URL, help="where fetch downloads the archive from (file:// for a local copy)")
    parser.add_argument("--expect", type=_counts, default=SPLITS, metavar="training=N,validation=N,evaluation=N",
                        help="fetch: the photos per split that make the set complete (default: the real data set's)")
    args = parser.parse_args(argv)
    try:
        if args.action == "organize":
            moved = organize(args.root)
            print("moved " + ", ".join(f"{n} {s} photos" for s, n in moved.items()))
            counts = verify(args.root)
        elif args.action == "fetch":
            counts = fetch(args.root, args.url, args.expect)
        else:
            counts = verify(args.root)
    except DataLayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(describe(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
