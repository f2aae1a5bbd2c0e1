"""The Food-11 layout: organizing a raw tree, checking a data directory, downloading the archive."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chi_helpers import food11
from chi_helpers.local import sample_data


def make_raw_tree(root: Path, per_class: int = 2) -> None:
    """The raw archive's layout: photos `<class>_<n>.jpg` loose in each split folder."""
    for split in food11.SPLITS:
        (root / split).mkdir(parents=True)
        for c in range(len(food11.CLASSES)):
            for n in range(per_class):
                (root / split / f"{c}_{n}.jpg").write_bytes(f"{split} {c} {n}".encode())


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_organize_sorts_each_photo_into_its_class_folder(tmp_path):
    make_raw_tree(tmp_path)
    moved = food11.organize(tmp_path)
    assert moved == {split: 22 for split in food11.SPLITS}
    for split in food11.SPLITS:
        assert not list((tmp_path / split).glob("*.jpg")), "no photo left loose"
        for c in range(11):
            folder = tmp_path / split / f"class_{c:02d}"
            assert sorted(p.name for p in folder.iterdir()) == [f"{c}_0.jpg", f"{c}_1.jpg"]
            assert (folder / f"{c}_1.jpg").read_bytes() == f"{split} {c} 1".encode()
    counts = food11.verify(tmp_path)
    assert counts["evaluation"]["class_10"] == 2


def test_organize_twice_changes_nothing(tmp_path):
    make_raw_tree(tmp_path)
    food11.organize(tmp_path)
    before = snapshot(tmp_path)
    assert food11.organize(tmp_path) == {split: 0 for split in food11.SPLITS}
    assert snapshot(tmp_path) == before


def test_organize_picks_up_photos_added_after_a_first_run(tmp_path):
    make_raw_tree(tmp_path)
    food11.organize(tmp_path)
    (tmp_path / "training" / "4_99.jpg").write_bytes(b"late")
    assert food11.organize(tmp_path)["training"] == 1
    assert (tmp_path / "training" / "class_04" / "4_99.jpg").read_bytes() == b"late"


def test_organize_with_a_badly_named_photo_moves_nothing(tmp_path):
    make_raw_tree(tmp_path)
    (tmp_path / "validation" / "dinner.jpg").write_bytes(b"?")
    (tmp_path / "validation" / "11_0.jpg").write_bytes(b"?")  # there is no class 11
    before = snapshot(tmp_path)
    with pytest.raises(food11.DataLayoutError) as error:
        food11.organize(tmp_path)
    assert "2 photo(s) cannot be sorted, nothing was moved" in str(error.value)
    assert "dinner.jpg" in str(error.value) and "11_0.jpg" in str(error.value)
    assert snapshot(tmp_path) == before


def test_organize_refuses_a_folder_without_splits(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(food11.DataLayoutError, match="none of the split folders"):
        food11.organize(tmp_path)


@pytest.fixture
def organized(tmp_path) -> Path:
    make_raw_tree(tmp_path)
    food11.organize(tmp_path)
    return tmp_path


def verify_message(root: Path) -> str:
    with pytest.raises(food11.DataLayoutError) as error:
        food11.verify(root)
    return str(error.value)


def test_verify_names_a_missing_directory_and_how_to_make_one(tmp_path):
    message = verify_message(tmp_path / "nowhere")
    assert "does not exist" in message and "FOOD11_DATA_DIR" in message and "data sample" in message


def test_verify_names_a_missing_split(organized):
    for photo in (organized / "validation").rglob("*.jpg"):
        photo.unlink()
    for folder in (organized / "validation").iterdir():
        folder.rmdir()
    (organized / "validation").rmdir()
    assert "no 'validation' split folder" in verify_message(organized)


def test_verify_names_an_empty_class(organized):
    for photo in (organized / "evaluation" / "class_07").iterdir():
        photo.unlink()
    message = verify_message(organized)
    assert "evaluation/class_07 holds no photos" in message
    assert "training" not in message


def test_verify_names_unsorted_photos_and_the_command_that_sorts_them(tmp_path):
    make_raw_tree(tmp_path)
    message = verify_message(tmp_path)
    assert "22 photo(s) not sorted into class folders" in message
    assert f"data organize {tmp_path}" in message


def test_verify_names_missing_and_foreign_class_folders(organized):
    (organized / "training" / "class_03").rename(organized / "training" / "Egg")
    message = verify_message(organized)
    assert "lacks class folder(s) class_03" in message
    assert "Egg" in message and "extra classes" in message


def test_verify_lists_every_problem_at_once(organized):
    (organized / "training" / "class_00" / "0_0.jpg").unlink()
    (organized / "training" / "class_00" / "0_1.jpg").unlink()
    (organized / "evaluation" / "1_5.jpg").write_bytes(b"loose")
    message = verify_message(organized)
    assert "training/class_00 holds no photos" in message
    assert "evaluation holds 1 photo(s) not sorted" in message


def test_is_complete_needs_every_photo(organized):
    assert not food11.is_complete(organized)  # the real data set has 16,643 photos
    assert food11.is_complete(organized, expected={s: 22 for s in food11.SPLITS})


def test_the_module_runs_standalone_as_the_data_container_runs_it(tmp_path):
    make_raw_tree(tmp_path)
    # -I: isolated, as in a bare python image: only the standard library and this file.
    done = subprocess.run(
        [sys.executable, "-I", food11.__file__, "organize", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "training" in done.stdout and "22 photos in 11 classes" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-I", food11.__file__, "verify", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def make_archive(tmp_path: Path, wrap: str | None = "Food-11") -> Path:
    """A Food-11-shaped zip with the raw layout, wrapped in a top folder like the real one."""
    raw = tmp_path / "raw"
    sample_data.make_sample_dataset(raw, per_class={"training": 2, "validation": 1, "evaluation": 1},
                                    image_size=16, organize=False)
    archive = tmp_path / "food11.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for photo in sorted(raw.rglob("*.jpg")):
            rel = photo.relative_to(raw)
            zf.write(photo, f"{wrap}/{rel}" if wrap else str(rel))
    return archive


SMALL = {"training": 22, "validation": 11, "evaluation": 11}


@pytest.mark.parametrize("wrap", ["Food-11", None])
def test_fetch_downloads_checks_unpacks_and_organizes(tmp_path, wrap, capsys):
    archive = make_archive(tmp_path, wrap)
    root = tmp_path / "data" / "Food-11"
    counts = food11.fetch(root, url=archive.as_uri(), expected=SMALL)
    assert {s: sum(c.values()) for s, c in counts.items()} == SMALL
    assert not (root / "Food-11.zip").exists() and not list(root.glob("*.part"))
    assert "complete" in capsys.readouterr().out
    # Complete now: a second fetch downloads nothing (this URL would fail if it tried).
    before = snapshot(root)
    food11.fetch(root, url=(tmp_path / "gone.zip").as_uri(), expected=SMALL)
    assert snapshot(root) == before


def test_fetch_of_a_damaged_archive_leaves_nothing_behind(tmp_path):
    archive = make_archive(tmp_path)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    root = tmp_path / "data"
    with pytest.raises(OSError, match="arrived damaged"):
        food11.fetch(root, url=damaged.as_uri(), expected=SMALL)
    assert list(root.iterdir()) == []


def test_fetch_reports_an_archive_with_photos_missing(tmp_path):
    archive = make_archive(tmp_path)
    with pytest.raises(food11.DataLayoutError, match="expected"):
        food11.fetch(tmp_path / "data", url=archive.as_uri(), expected={**SMALL, "training": 99})
