"""Node setup steps per variant, the chameleon plan (--dry-run), and setup steps really run twice."""

from __future__ import annotations

import json
import subprocess
import sys
from unittest import mock

import pytest

from chi_helpers import parameters
from chi_helpers.chameleon import plan as chameleon_plan
from chi_helpers.chameleon import node_setup
from chi_helpers.variants import VARIANTS

REPO = node_setup.REMOTE_REPO


def titles(variant: str) -> list[str]:
    return [s.title for s in node_setup.steps(VARIANTS[variant])]


def test_nvidia_steps_in_order():
    commands = [s.command for s in node_setup.steps(VARIANTS["nvidia"])]
    order = ["git clone --quiet /tmp/mlflow-chi.bundle", "DPkg::Lock::Timeout", "get.docker.com", "usermod -aG docker",
             "libnvidia-container/gpgkey",
             "nvidia-container-toolkit.list", "apt-get install -yq nvidia-container-toolkit jq nvtop",
             "nvidia-ctk runtime configure --runtime=docker", "native.cgroupdriver=cgroupfs",
             "systemctl restart docker", "nvidia-smi", "docker build -t jupyter-mlflow -f docker/Dockerfile.jupyter-mlflow-cuda"]
    assert len(commands) == len(order)
    for command, expected in zip(commands, order):
        assert expected in command


def test_amd_steps_check_rocm_and_build_nvtop_with_amd_support():
    commands = [s.command for s in node_setup.steps(VARIANTS["amd"])]
    assert "rocm-smi" in commands[-2] and "Dockerfile.jupyter-mlflow-rocm" in commands[-1]
    assert any("-DAMDGPU_SUPPORT=ON" in c for c in commands)
    assert not any("nvidia" in c for c in commands)


def test_vm_sets_up_like_nvidia():
    assert titles("vm") == titles("nvidia")


# Each step's guard against a second run: a check before it acts, or an action that repeats cleanly.
SAFE_TWICE = {
    "DPkg::Lock::Timeout": "sudo tee",  # rewrites the same file
    "get.docker.com": "command -v docker >/dev/null ||",
    "usermod": "groupadd -f",
    "gpgkey": "--batch --yes",
    "nvidia-container-toolkit.list": "sudo tee",  # rewrites the same file
    "apt-get install": "apt-get install -yq",
    "nvidia-ctk": "runtime configure",  # rewrites the same daemon.json keys
    "cgroupdriver": '. + {',  # a merge: the key is set, not appended
    "restart docker": "systemctl restart",
    "nvtop.git": "command -v nvtop >/dev/null ||",
    "docker build": "docker image inspect jupyter-mlflow >/dev/null 2>&1 ||",
    "mlflow-chi.bundle": "test -d ~/mlflow-chi/.git ||",  # cloned once, then fast-forwarded
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_step_is_written_to_be_safe_twice(variant):
    for step in node_setup.steps(VARIANTS[variant]):
        if step.command in ("nvidia-smi", "rocm-smi"):
            continue  # only looks
        guards = [guard for key, guard in SAFE_TWICE.items() if key in step.command]
        assert guards, f"no known guard for: {step.command}"
        assert all(g in step.command for g in guards), step.command


def run_here(command: str, tmp_path, replacements: dict[str, str]) -> subprocess.CompletedProcess:
    for old, new in replacements.items():
        command = command.replace(old, new)
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path)


def test_the_cgroupfs_step_run_twice_leaves_one_setting(tmp_path):
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}))
    [step] = [s for s in node_setup.NVIDIA if "cgroupdriver" in s.command]
    for _ in range(2):
        done = run_here(step.command, tmp_path, {"sudo ": "", "/etc/docker": str(tmp_path)})
        assert done.returncode == 0, done.stderr
    config = json.loads(daemon.read_text())
    assert config["exec-opts"] == ["native.cgroupdriver=cgroupfs"]
    assert config["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"  # the toolkit's part kept


def test_the_clone_step_run_twice_lands_on_the_ref(tmp_path):
    origin = tmp_path / "origin"
    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    (origin / "README.md").write_text("v1")
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    [step] = node_setup.materials(repo=str(origin), ref="main")
    target = tmp_path / "node-home" / "mlflow-chi"
    for version in ("v1", "v2"):
        if version == "v2":
            (origin / "README.md").write_text("v2")
            subprocess.run([*git, "commit", "-qam", "v2"], check=True)
        done = run_here(step.command, tmp_path, {REPO: str(target)})
        assert done.returncode == 0, done.stderr
        assert (target / "README.md").read_text() == version


def test_the_upload_step_checks_out_this_copy_again_and_again(tmp_path):
    bundle = node_setup.pack_checkout(str(tmp_path / "series.bundle"))
    [step] = node_setup.materials(archive=bundle)
    target = tmp_path / "mlflow-chi"
    for _ in range(2):
        (tmp_path / "upload.bundle").write_bytes(open(bundle, "rb").read())  # what node.upload does
        done = run_here(step.command, tmp_path, {REPO: str(target), node_setup.BUNDLE: str(tmp_path / "upload.bundle")})
        assert done.returncode == 0, done.stderr
        assert not (tmp_path / "upload.bundle").exists()
    assert (target / "chi_helpers" / "food11.py").exists() and (target / "docker" / "compose-tracking.yaml").exists()
    assert (target / ".git").is_dir()


def test_a_failing_step_shows_its_command_and_output_tail():
    from invoke.exceptions import UnexpectedExit
    from invoke.runners import Result

    node = mock.Mock()
    result = Result(stdout="line\n" * 30 + "E: Unable to locate package nvtop\n", stderr="", exited=100,
                    command="sudo apt-get install")
    node.execute.side_effect = UnexpectedExit(result)
    step = node_setup.NVIDIA[2]
    with pytest.raises(node_setup.StepFailed) as error:
        node_setup.run(node, step)
    message = str(error.value)
    assert "failed with status 100" in message and step.command in message
    assert message.rstrip().endswith("E: Unable to locate package nvtop") and message.count("line") <= 15


def test_run_uploads_before_the_command():
    node = mock.Mock()
    node.execute.return_value = mock.Mock(stdout="ok", stderr="")
    [step] = node_setup.materials(archive="/tmp/x.bundle")
    node_setup.run(node, step)
    assert [c[0] for c in node.mock_calls] == ["upload", "execute"]
    node.upload.assert_called_once_with("/tmp/x.bundle", node_setup.BUNDLE)


# --- the chameleon plan --------------------------------------------------------------------------

def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chi_helpers", "run", "--target", "chameleon", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variant,expected", [
    ("nvidia", ["add_node_reservation(amount=1, node_name='liqid01')", "image_name='CC-Ubuntu24.04-CUDA'",
                "nvidia-ctk runtime configure", "--gpus all", "Dockerfile.jupyter-mlflow-cuda"]),
    ("amd", ["add_node_reservation(amount=1, node_name='P3-GPU-009')", "image_name='CC-Ubuntu24.04-ROCm'",
             "rocm-smi", "--device=/dev/kfd", "Dockerfile.jupyter-mlflow-rocm"]),
    ("vm", ["add_flavor_reservation(name='g1.h100.pci.1', amount=1)", "SecurityGroup allow-8888",
            "unless the server has it", "flavor_name=<the lease's reserved flavor>", "--gpus all"]),
])
def test_dry_run_prints_the_whole_plan_for_each_variant(variant, expected):
    node = ["--node", "P3-GPU-009"] if variant == "amd" else []
    done = dry_run("--gpu", variant, "--lease-name", "mlflow_abc123", "--project", "CHI-123456", "--user", "abc123",
                   "--dry-run", *node)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for text in expected:
        assert text in out, text
    assert "allow-9000" not in out and "allow-9001" not in out  # the object store stays on the node's loopback
    sections = ["01_reserve", "02_server", "03_data", "04_stack", "05_track_pytorch", "06_lightning", "07_registry", "08_release"]
    positions = [out.index(f"[{s}:") for s in sections]
    assert positions == sorted(positions)
    for text in ("server.Server('node-mlflow-abc123'", "credentials.py write ~/mlflow-stack.env",
                 f"mkdir -p ~/mlflow-chi/.executed/{variant}",
                 f"jupyter papermill 06_lightning.ipynb ../../.executed/{variant}/06_lightning.ipynb -p apply_solution True",
                 "server.delete_server", "deallocate_floating_ip", "lease.get_lease('mlflow_abc123').delete()"):
        assert text in out, text
    assert "none made" in out


def test_the_plan_touches_nothing():
    with mock.patch("chi.lease.blazar") as blazar, mock.patch("chi.server.connection") as nova:
        actions = chameleon_plan.plan(VARIANTS["nvidia"], "mlflow_abc123", "liqid01", "CHI-1", "CHI@TACC", "abc123")
    assert blazar.mock_calls == [] and nova.mock_calls == []
    assert len(actions) > 30


@pytest.mark.parametrize("args,message", [
    (["--lease-name", "", "--project", "CHI-1"], "lease_name is empty"),
    (["--lease-name", "mlflow_x", "--project", "CHI-1", "--gpu", "amd"], "node_name is empty"),
])
def test_dry_run_checks_its_inputs_first(args, message):
    done = dry_run(*args, "--user", "abc123", "--dry-run")
    assert done.returncode == 2 and message in done.stderr
    with pytest.raises(parameters.ParameterError):
        chameleon_plan.plan(VARIANTS["amd"], "mlflow_x", None, "CHI-1", "CHI@TACC", "abc123")
