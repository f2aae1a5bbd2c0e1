"""Setting up the node, per variant: an ordered list of shell steps, each safe to run twice.

Each step either checks before it acts (`command -v docker || ...`, `test -d ... ||`) or does
something that leaves the same state when repeated (`usermod -aG`, `apt-get install`, a JSON merge).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chi_helpers.chameleon.node_stack import REMOTE_REPO
from chi_helpers.variants import Variant

BUNDLE = "/tmp/mlflow-chi.bundle"  # where an uploaded copy of the series (a git bundle) lands on the node
NVIDIA_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
IMAGE = "jupyter-mlflow"  # built on the node, never pulled (no registry serves it)
BUILD_LOG = "~/jupyter-build.log"
BUILD_STATUS = "~/jupyter-build.status"  # "building" while the build runs, then its exit status
# Apt's own setting: wait up to 10 min for the package lock instead of failing at once. A fresh Ubuntu
# 24.04 runs unattended-upgrades right after boot, which holds the lock for minutes.
APT_LOCK_CONF = "/etc/apt/apt.conf.d/90-mlflow-series-lock-timeout"
# A name for the commits made on the node (the num_workers fix), set on every checkout, cloned or uploaded.
GIT_IDENTITY = 'config user.name "$USER" && git -C {repo} config user.email "$USER@$(hostname)"'


def piped(command: str) -> str:
    """A pipeline fails when any part fails: a download that fails must not feed `sh` an empty script."""
    return f"set -o pipefail; {command}"


@dataclass(frozen=True)
class Step:
    name: str  # what notebook 02's source calls it: `{{ node_command NAME }}`
    title: str
    command: str
    upload: str | None = None  # a local file sent to BUNDLE before the command runs


def materials(repo: str | None = None, ref: str = "main", archive: str | None = None) -> list[Step]:
    """The series on the node, as a git checkout (so every run records the commit of its code):
    cloned from `repo` at `ref`, or, when the series has no public home, this copy packed into the
    git bundle `archive` (see `pack_checkout`) and uploaded. A second upload fast-forwards the node's
    copy; commits made on the node are kept."""
    git = f"git -C {REMOTE_REPO}"
    identity = f"{git} " + GIT_IDENTITY.format(repo=REMOTE_REPO)
    if repo:
        return [Step(
            "series_from_repo", f"this series' files at {REMOTE_REPO}, from {repo} at {ref}",
            f"test -d {REMOTE_REPO}/.git || git clone {repo} {REMOTE_REPO}; "
            f"{git} fetch --depth 1 origin {ref} && {git} checkout --force FETCH_HEAD && {identity}",
        )]
    return [Step(
        "series_from_bundle", f"this series' files at {REMOTE_REPO}, a git checkout of the uploaded copy",
        # A bundle of HEAD clones detached: a branch to commit on, and a name for those commits.
        f"test -d {REMOTE_REPO}/.git || {{ git clone --quiet {BUNDLE} {REMOTE_REPO} && {git} switch --quiet -c series "
        f"&& {identity}; }}; "
        f"{git} fetch --quiet {BUNDLE} HEAD && {{ {git} merge --ff-only --quiet FETCH_HEAD "
        f"|| echo 'the copy on the node has commits of its own: kept as it is'; }} && rm {BUNDLE}",
        upload=archive or "<this copy of the series, packed as a git bundle>",
    )]


def pack_checkout(path: str, root: str | Path | None = None) -> str:
    """This copy of the series as a git bundle at `path`, to upload.

    A git checkout sends its history up to HEAD (committed files only), so a run on the node records
    the same commit as here. A copy that is not a git checkout (a download, some Trovi launches)
    sends one commit of its files, as they are, and the node starts its history from there.
    """
    from chi_helpers.series import REPO_ROOT

    root = Path(root or REPO_ROOT)
    inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if inside.returncode == 0 and Path(inside.stdout.strip()).resolve() == root.resolve():
        subprocess.run(["git", "-C", str(root), "bundle", "create", "--quiet", path, "HEAD"], check=True)
        return path
    return pack_snapshot(path, root)


def pack_snapshot(path: str, root: str | Path, message: str = "the series as copied") -> str:
    """The files of `root` as they are now (what its .gitignore leaves), one commit, as a git bundle."""
    with tempfile.TemporaryDirectory() as git_dir:
        git = ["git", f"--git-dir={git_dir}", f"--work-tree={root}", "-c", "user.name=series",
               "-c", "user.email=series@localhost", "-c", "commit.gpgsign=false"]
        for command in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "-m", message],
                        ["bundle", "create", "--quiet", path, "HEAD"]):
            subprocess.run([*git, *command], check=True, capture_output=True)
    return path


DOCKER = [
    Step("apt_lock", "apt waits for the package lock (unattended-upgrades holds it after boot)",
         f"echo 'DPkg::Lock::Timeout \"600\";' | sudo tee {APT_LOCK_CONF} >/dev/null"),
    Step("docker", "Docker", piped("command -v docker >/dev/null || curl -fsSL https://get.docker.com/ | sudo sh")),
    Step("docker_group", "you in the docker group", "sudo groupadd -f docker && sudo usermod -aG docker $USER"),
]

NVIDIA = [
    Step("nvidia_key", "the NVIDIA container toolkit's package signing key",
         piped(f"curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | sudo gpg --batch --yes --dearmor -o {NVIDIA_KEYRING}")),
    Step("nvidia_repository", "the NVIDIA container toolkit's apt repository",
         piped("curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list | "
               f"sed 's#deb https://#deb [signed-by={NVIDIA_KEYRING}] https://#g' | "
               "sudo tee /etc/apt/sources.list.d/nvidia-container-toolkit.list >/dev/null")),
    Step("nvidia_toolkit", "the toolkit, jq and nvtop", "sudo apt-get update -q && sudo apt-get install -yq nvidia-container-toolkit jq nvtop"),
    Step("nvidia_runtime", "Docker's NVIDIA runtime", "sudo nvidia-ctk runtime configure --runtime=docker"),
    # A known toolkit issue: with the systemd cgroup driver, containers lose their GPUs after a while.
    # jq writes the merged file beside the old one, and only a whole new file replaces it.
    Step("cgroupfs", "Docker's cgroupfs driver",
         piped("""sudo jq '. + {"exec-opts": ["native.cgroupdriver=cgroupfs"]}' /etc/docker/daemon.json """
               "| sudo tee /etc/docker/daemon.json.new >/dev/null "
               "&& sudo mv /etc/docker/daemon.json.new /etc/docker/daemon.json")),
    Step("docker_restart", "Docker restarted with both", "sudo systemctl restart docker"),
    Step("gpus", "the GPUs, as the host sees them", "nvidia-smi"),
]

AMD = [
    Step("nvtop_build_tools", "what nvtop needs to build", "sudo apt-get update -q && sudo apt-get install -yq cmake g++ git libncurses-dev libdrm-dev libsystemd-dev"),
    Step("nvtop", "nvtop with AMD support",
         "command -v nvtop >/dev/null || (rm -rf /tmp/nvtop && git clone --depth 1 https://github.com/Syllo/nvtop.git /tmp/nvtop "
         "&& cmake -S /tmp/nvtop -B /tmp/nvtop/build -DAMDGPU_SUPPORT=ON -DNVIDIA_SUPPORT=OFF -DINTEL_SUPPORT=OFF "
         "&& sudo cmake --build /tmp/nvtop/build --target install)"),
    Step("gpus", "the GPUs, as the host sees them", "rocm-smi"),
]


def image_build(profile: Variant) -> Step:
    """Starts the Jupyter image build in the background (slow; ROCm very slow), its log and status on the
    node. Not again while one runs, nor once the image is there; a failed build starts anew."""
    return Step(
        "image_build", "the Jupyter image build, started in the background",
        f"docker image inspect {IMAGE} >/dev/null 2>&1 || grep -qx building {BUILD_STATUS} 2>/dev/null || "
        f"(cd {REMOTE_REPO} && echo building > {BUILD_STATUS} && nohup sg docker -c "
        f"'docker build -t {IMAGE} -f {profile.jupyter_dockerfile} . ; echo $? > {BUILD_STATUS}' "
        f"> {BUILD_LOG} 2>&1 &)",
    )


# One word for where the build stands (built, building, missing, or the failed build's exit status),
# then the log's last line.
IMAGE_STATE = (f"if docker image inspect {IMAGE} >/dev/null 2>&1; then echo built; "
               f"else cat {BUILD_STATUS} 2>/dev/null || echo missing; fi; tail -n 1 {BUILD_LOG} 2>/dev/null || true")


def image_build_check() -> Step:
    return Step("image_state", "has the image build finished?", IMAGE_STATE)


def steps(profile: Variant, repo: str | None = None, ref: str = "main", archive: str | None = None) -> list[Step]:
    """Everything the node needs, in order, for this variant."""
    gpu = AMD if profile.gpu_tool == "rocm-smi" else NVIDIA
    return [*materials(repo, ref, archive), *DOCKER, *gpu, image_build(profile)]


def lesson_steps(profile: Variant) -> dict[str, Step]:
    """Every command notebook 02 shows for this variant, by name: both ways of putting the series on
    the node (the clone's `{repo}` and `{ref}` left for the notebook's f-string), then `steps`."""
    every = [*materials("{repo}", "{ref}"), *steps(profile), image_build_check()]
    return {step.name: step for step in every}


class StepFailed(RuntimeError):
    """A setup step failed; the message holds the command and the tail of its output."""


# What a dropped or refused SSH connection raises (paramiko, Fabric, the socket underneath).
def _connection_errors() -> tuple[type[BaseException], ...]:
    import paramiko

    return (paramiko.SSHException, EOFError, ConnectionError, TimeoutError, OSError)


def run(node, step: Step, retry_after: float = 5.0) -> str:
    """Run one step on the node (a python-chi Server), its output shown as it comes.

    A failing command raises StepFailed with the command and the tail of its output. A connection
    that drops is tried once more (every step is safe to run twice); a second drop is a StepFailed
    that says what to check.
    """
    import time

    from invoke.exceptions import UnexpectedExit

    print(f"--- {step.title}\n$ {step.command}", flush=True)
    for attempt in (1, 2):
        try:
            if step.upload:
                node.upload(step.upload, BUNDLE)
            result = node.execute(step.command)
            break
        except UnexpectedExit as failure:
            result = failure.result
            output = (result.stdout or "") + (result.stderr or "")
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise StepFailed(f"step '{step.title}' failed with status {result.exited}:\n$ {step.command}\n{tail}") from None
        except _connection_errors() as error:
            import paramiko

            if isinstance(error, paramiko.AuthenticationException) or "key" in str(error).lower():
                raise StepFailed(
                    f"step '{step.title}': the node did not take the SSH key ({type(error).__name__}: {error}). "
                    "OS_KEYPAIR_PRIVATE_KEY must be the private half of the key pair the server was made with "
                    "(python-chi's keypair_name); fix that, then run this notebook again."
                ) from None
            if attempt == 2:
                raise StepFailed(
                    f"step '{step.title}': the SSH connection to the node failed twice ({type(error).__name__}: "
                    f"{error}). Check that the server is ACTIVE and port 22 answers, then run this notebook again: "
                    "every step is safe to repeat."
                ) from None
            print(f"    the SSH connection dropped ({type(error).__name__}); trying again in {retry_after:.0f} s",
                  flush=True)
            time.sleep(retry_after)
    return (result.stdout or "") + (result.stderr or "")
