"""gpu-info.txt: what nvidia-smi or rocm-smi says, found on PATH, or a note that there is no GPU."""

from __future__ import annotations

import sys

import pytest

from conftest import WORKSPACE

sys.path.insert(0, str(WORKSPACE))
import food11_training  # noqa: E402


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """An empty PATH, and a way to put a fake command on it."""
    monkeypatch.setenv("PATH", str(tmp_path))

    def add(name: str, script: str) -> None:
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n" + script)
        tool.chmod(0o755)

    return add


def test_nvidia_smi_output_is_the_report(fake_bin):
    fake_bin("nvidia-smi", 'echo "GPU 0: NVIDIA A100-PCIE-40GB"; echo "GPU 1: NVIDIA A100-PCIE-40GB"\n')
    report = food11_training.gpu_info()
    assert report.startswith("$ nvidia-smi\n")
    assert report.count("NVIDIA A100-PCIE-40GB") == 2


def test_rocm_smi_is_asked_for_product_and_memory(fake_bin):
    fake_bin("rocm-smi", 'echo "args: $*"; echo "GPU[0] Card series: AMD Instinct MI100"\n')
    report = food11_training.gpu_info()
    assert "args: --showproductname --showmeminfo vram" in report
    assert "AMD Instinct MI100" in report


def test_nvidia_smi_wins_when_both_are_there(fake_bin):
    fake_bin("nvidia-smi", "echo from-nvidia\n")
    fake_bin("rocm-smi", "echo from-rocm\n")
    assert "from-nvidia" in food11_training.gpu_info() and "from-rocm" not in food11_training.gpu_info()


def test_a_failing_tool_still_leaves_its_message(fake_bin):
    fake_bin("nvidia-smi", 'echo "NVIDIA-SMI has failed because it could not communicate with the driver" >&2; exit 9\n')
    assert "could not communicate with the driver" in food11_training.gpu_info()


def test_no_tool_gives_the_no_gpu_note(fake_bin):
    assert food11_training.gpu_info() == food11_training.NO_GPU_NOTE
    assert "CPU" in food11_training.NO_GPU_NOTE
