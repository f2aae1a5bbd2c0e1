"""The data job in a real container, and what a failing stack says.

The data job (`docker/compose-data.yaml`) fills its volume from a local copy of the archive here
(Food-11 cannot be downloaded on these machines), through the same `food11.py fetch` with a file://
URL, and does nothing the second time. A stack whose service cannot start is reported by name, with
the end of that service's log.
"""

from __future__ import annotations

import subprocess
import zipfile

import pytest
import yaml

from chi_helpers import credentials
from chi_helpers.containers import compose
from chi_helpers.local import sample_data

VOLUME = "food11-ci-test"  # the node's volume is `food11`; a developer's own stays untouched
PER_CLASS = {"training": 2, "validation": 1, "evaluation": 1}


@pytest.fixture
def archive(tmp_path):
    """A Food-11-shaped zip in the raw archive's layout (flat files per split, a top folder)."""
    raw = tmp_path / "raw" / "Food-11"
    sample_data.make_sample_dataset(raw, per_class=PER_CLASS, image_size=16, organize=False)
    path = tmp_path / "Food-11.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(raw.rglob("*.jpg")):
            zf.write(file, "Food-11/" + str(file.relative_to(raw)))
    return path


def test_the_data_job_fills_the_volume_once(docker_engine, ci_base, archive, tmp_path):
    photos = {split: 11 * n for split, n in PER_CLASS.items()}
    override = tmp_path / "compose-data-ci.yaml"
    override.write_text(yaml.safe_dump({
        "services": {"fetch-food11": {
            "image": ci_base,  # python:3.11.9-slim-bookworm's stand-in
            "volumes": [f"{archive}:/archive/Food-11.zip:ro"],
            "command": ["python", "/opt/food11.py", "fetch", "/data/Food-11", "--url", "file:///archive/Food-11.zip",
                        "--expect", ",".join(f"{s}={n}" for s, n in photos.items())],
        }},
        "volumes": {"food11": {"external": True, "name": VOLUME}},
    }))
    project = compose.Project("food11-ci-test", [compose.DATA_FILE, override])
    subprocess.run(["docker", "volume", "rm", "-f", VOLUME], capture_output=True)
    subprocess.run(["docker", "volume", "create", VOLUME], check=True, capture_output=True)
    try:
        first = project.run("up", "--exit-code-from", "fetch-food11")
        assert first[0] == 0, first[1][-3000:]
        assert "organized:" in first[1]
        listed = subprocess.run(["docker", "run", "--rm", "-v", f"{VOLUME}:/data", ci_base, "find", "/data/Food-11",
                                 "-name", "*.jpg"], capture_output=True, text=True, check=True).stdout.split()
        for split, n in photos.items():
            in_split = [p for p in listed if p.startswith(f"/data/Food-11/{split}/")]
            assert len(in_split) == n and all(p.count("/") == 5 for p in in_split), in_split  # split/class/photo
        assert not [p for p in listed if p.endswith(".zip")]
        second = project.run("up", "--exit-code-from", "fetch-food11")
        assert second[0] == 0 and "nothing to do" in second[1] and "organized:" not in second[1], second[1][-2000:]
    finally:
        project.down()
        subprocess.run(["docker", "volume", "rm", "-f", VOLUME], capture_output=True)


def test_a_service_that_cannot_start_is_named_with_its_log(docker_engine, ci_base, tmp_path):
    env_file = tmp_path / "stack.env"
    credentials.write(env_file, "127.0.0.1")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"services": {"postgres": {
        "entrypoint": ["sh", "-c", "echo the disk is full >&2; exit 3"]}}}))
    project = compose.Project("mlflow-ci-broken", [compose.TRACKING_FILE, compose.CI_OVERRIDE, broken], env_file)
    try:
        project.build(f"BASE_IMAGE={ci_base}")
        with pytest.raises(compose.ComposeError) as error:
            project.up(timeout=120)
        message = str(error.value)
        # Compose restarts it (`restart: unless-stopped`); it is named, with why, and what waits on it.
        assert "service postgres is restarting (exit code 3)" in message, message
        assert "the end of its log:\nthe disk is full" in message and "\x1b" not in message, message
        assert "not started or not ready yet: mlflow" in message, message
        assert credentials.read(env_file)["POSTGRES_PASSWORD"] not in message
    finally:
        project.down(volumes=True)
