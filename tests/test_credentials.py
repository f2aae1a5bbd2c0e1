"""The generated env file: random, private; its secrets never change once a stack uses them, and its
address lines follow the node's address."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from chi_helpers import credentials


def test_write_makes_random_private_credentials(tmp_path):
    values, created = credentials.write(tmp_path / "a.env", "129.114.1.2")
    other, _ = credentials.write(tmp_path / "b.env", "129.114.1.2")
    assert created
    assert set(credentials.REQUIRED) <= set(values)
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MINIO_ROOT_USER", "POSTGRES_USER", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert values[key] != other[key], f"{key} is the same in two deployments"
    assert len(values["POSTGRES_PASSWORD"]) >= 24
    assert stat.S_IMODE((tmp_path / "a.env").stat().st_mode) == 0o600
    assert values["MLFLOW_ALLOWED_HOSTS"].startswith("129.114.1.2:8000,129.114.1.2,")
    assert values["MLFLOW_CORS_ALLOWED_ORIGINS"] == "http://129.114.1.2:8000"
    assert credentials.read(tmp_path / "a.env") == values


def test_the_same_address_leaves_the_file_as_it_is(tmp_path):
    path = tmp_path / "stack.env"
    first, _ = credentials.write(path, "10.0.0.1")
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    again, created = credentials.write(path, "10.0.0.1")
    assert not created and again == first and path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_a_new_address_rewrites_the_address_lines_and_keeps_every_secret(tmp_path):
    path = tmp_path / "stack.env"
    first, _ = credentials.write(path, "10.0.0.1")
    lines = path.read_text().splitlines()
    moved, created = credentials.write(path, "129.114.9.9")
    assert not created
    assert {k: v for k, v in moved.items() if k not in credentials.ADDRESS_KEYS} == \
        {k: v for k, v in first.items() if k not in credentials.ADDRESS_KEYS}
    assert moved["MLFLOW_ALLOWED_HOSTS"].startswith("129.114.9.9:8000,") and "10.0.0.1" not in path.read_text()
    assert moved["MLFLOW_CORS_ALLOWED_ORIGINS"] == "http://129.114.9.9:8000"
    assert credentials.read(path) == moved and stat.S_IMODE(path.stat().st_mode) == 0o600
    # Line for line the same file, the two address lines aside, and nothing left beside it.
    changed = [(a, b) for a, b in zip(lines, path.read_text().splitlines()) if a != b]
    assert [a.split("=")[0] for a, _ in changed] == list(credentials.ADDRESS_KEYS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.env"]


def test_a_file_from_before_the_origin_gets_it_added(tmp_path):
    path = tmp_path / "stack.env"
    old = {k: v for k, v in credentials.generate("10.0.0.1").items() if k != "MLFLOW_CORS_ALLOWED_ORIGINS"}
    path.write_text("".join(f"{k}={v}\n" for k, v in old.items()))
    values, _ = credentials.write(path, "10.0.0.1")
    assert path.read_text().startswith("".join(f"{k}={v}\n" for k, v in old.items()))
    assert values["MLFLOW_CORS_ALLOWED_ORIGINS"] == "http://10.0.0.1:8000" and credentials.read(path) == values


@pytest.mark.parametrize("address", ["", "10.0.0.1,evil.test", "http://10.0.0.1", "a b"])
def test_an_address_that_is_no_host_is_refused_and_nothing_written(tmp_path, address):
    with pytest.raises(ValueError, match="is not a host name or IP address"):
        credentials.write(tmp_path / "stack.env", address)
    assert not (tmp_path / "stack.env").exists()


def test_a_damaged_file_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "stack.env"
    path.write_text("POSTGRES_USER=x\n")
    with pytest.raises(ValueError, match="lacks POSTGRES_PASSWORD") as error:
        credentials.write(path, "10.0.0.1")
    assert "was not changed" in str(error.value) and path.read_text() == "POSTGRES_USER=x\n"


def test_standalone_as_on_the_node(tmp_path):
    script = credentials.__file__
    run = lambda *a: subprocess.run([sys.executable, "-I", script, *a], capture_output=True, text=True)
    first = run("write", str(tmp_path / "s.env"), "--address", "129.114.1.2")
    assert first.returncode == 0 and "wrote new credentials" in first.stdout
    again = run("write", str(tmp_path / "s.env"), "--address", "129.114.1.3")
    assert "kept the existing" in again.stdout and "the node's address is now 129.114.1.3" in again.stdout
    forgotten = run("write", str(tmp_path / "s.env"))  # no address: refused, rather than a wrong one
    assert forgotten.returncode == 2 and "--address" in forgotten.stderr


def test_a_file_from_before_the_sign_in_gets_one_added_and_keeps_the_rest(tmp_path):
    path = tmp_path / "stack.env"
    old = {k: v for k, v in credentials.generate("10.0.0.1").items() if k not in credentials.SIGN_IN}
    path.write_text("".join(f"{k}={v}\n" for k, v in old.items()))
    before = path.read_text()
    values, created = credentials.write(path, "10.0.0.1")
    assert not created and path.read_text().startswith(before)
    assert {k: values[k] for k in old} == old and credentials.read(path) == values
    assert values["MLFLOW_TRACKING_USERNAME"] == "admin" and len(values["MLFLOW_TRACKING_PASSWORD"]) >= 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.write(path, "10.0.0.1") == (values, False)  # and only once


def test_a_half_written_sign_in_is_reported_not_replaced(tmp_path):
    path = tmp_path / "stack.env"
    values = credentials.generate("10.0.0.1")
    del values["MLFLOW_TRACKING_PASSWORD"]
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    before = path.read_text()
    with pytest.raises(ValueError, match="lacks MLFLOW_TRACKING_PASSWORD"):
        credentials.write(path, "10.0.0.1")
    assert path.read_text() == before


def test_the_write_command_names_the_user_never_the_password(tmp_path):
    done = subprocess.run([sys.executable, "-I", credentials.__file__, "write", str(tmp_path / "s.env"),
                           "--address", "129.114.1.2"], capture_output=True, text=True)
    values = credentials.read(tmp_path / "s.env")
    assert "MLflow sign-in: user admin" in done.stdout and str(tmp_path / "s.env") in done.stdout
    assert values["MLFLOW_TRACKING_PASSWORD"] not in done.stdout + done.stderr


def test_the_sign_in_alone_is_made_once_and_kept(tmp_path):
    path = tmp_path / "auth.env"
    first = credentials.write_sign_in(path)
    assert set(first) == set(credentials.SIGN_IN) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.write_sign_in(path) == first
