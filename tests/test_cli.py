"""`python -m chi_helpers ...` as a terminal user meets it."""

from __future__ import annotations

import re
import subprocess
import sys



def cli(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chi_helpers", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_help_lists_every_command():
    done = cli("--help")
    assert done.returncode == 0
    for command in ("stack", "data", "bench", "build", "run"):
        assert command in done.stdout


def test_data_sample_then_verify(tmp_path):
    root = tmp_path / "Food-11"
    made = cli("data", "sample", str(root), "--per-class", "training=2,validation=1,evaluation=1", "--image-size", "24")
    assert made.returncode == 0, made.stderr
    assert "training        22 photos in 11 classes" in made.stdout
    checked = cli("data", "verify", str(root))
    assert checked.returncode == 0 and "evaluation      11 photos" in checked.stdout


def test_data_errors_say_what_is_wrong(tmp_path):
    missing = cli("data", "verify", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_counts = cli("data", "sample", str(tmp_path / "x"), "--per-class", "training=2")
    assert bad_counts.returncode == 2 and "name each of training, validation, evaluation" in bad_counts.stderr


def test_bench_tracking_prints_its_figures():
    done = cli("bench", "tracking", "--calls", "3", "--blocks", "1", "--epochs", "1", "--per-class", "2",
               "--image-size", "32")
    assert done.returncode == 0, done.stderr[-3000:]
    for figure in (r"stack ready \(cold start, SQLite\): +\d+\.\d s",
                   r"synchronous: +\d+\.\d ms per call",
                   r"asynchronous: +\d+\.\d+ ms per call",
                   r"async: +\d\.\d{3}",
                   r"sync: +\d\.\d{3}"):
        assert re.search(figure, done.stdout), figure


def test_bench_server_prints_both_backends():
    done = cli("bench", "server", "--calls", "3", "--megabytes", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"SQLite \+ local folder +\d+ +\d+ +\d+", done.stdout), done.stdout[-1500:]
    assert re.search(r"PostgreSQL \+ S3 +\d+ +\d+ +\d+", done.stdout), done.stdout[-1500:]
