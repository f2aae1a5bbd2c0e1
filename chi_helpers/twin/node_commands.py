"""What a twin node answers to each command: an Ubuntu 24.04 host of the series, without changing this machine.

Every command the series sends a node (`node_setup`'s steps for each variant, `node_stack`'s commands,
the few the notebooks write out) has a pattern here that reads what the command means (which archive
goes where, which env file, which compose file, which notebook) and an answer that does it to the
node's own folder, `nodes/<server id>/root/`, or to processes the node owns:

- setup (apt, Docker, the NVIDIA toolkit, nvtop, `nvidia-smi`/`rocm-smi`): plausible output, state kept
  (a step that needs an earlier one fails as it would: no `nvidia-ctk` before the toolkit is installed);
- the series' files: the uploaded git bundle is really cloned (and fetched again); `git clone` of a
  URL cannot reach a host;
- the data job makes the small Food-11-shaped set in the node's `food11` volume (once);
- the tracking stack: the real `credentials.py`, and `chi_helpers.local.stack` on `<floating ip>:8000`; the
  Compose file's `archive` service (left out of `up` by its profile) runs the real `chi_helpers.archive`
  against that stack, the file in the folder the Compose file mounts (`~/mlflow-archives`);
- the Jupyter container: remembered, and `docker exec ... papermill` runs the notebook for real with
  papermill on the node's copy, with the container's environment mapped onto the node's folder.

A command no pattern knows fails loudly: exit 127, `twin node: no answer for this command: <cmd>`. The
patterns are written out by hand on purpose, using the helpers' constants (paths, file names): when a
helper's command changes, `tests/twin/test_node.py` (which sends every command the helpers make) fails,
rather than the twin quietly accepting a command it does not understand.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import posixpath
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from chi_helpers import compose_file
from chi_helpers.chameleon import node_setup, node_stack

HOME = "/home/cc"
VOLUMES = "/var/lib/docker/volumes"  # a named volume's files: <VOLUMES>/<name>/_data
JUPYTER_HOME = "/home/jovyan"  # the Jupyter image's user (its home is the container's, not the host's)
NO_ANSWER = "twin node: no answer for this command: {command}"

# The data set a node's data job makes: the real Food-11's shape, a few photos per class.
SAMPLE_PER_CLASS = {"training": 4, "validation": 2, "evaluation": 2}
SAMPLE_IMAGE_SIZE = 32
# The training the twin's node-side notebooks run (a CPU-sized run, as the tests use), when declared.
TWIN_NOTEBOOK_PARAMETERS = {
    "training_overrides": {"image_size": 32, "initial_epochs": 1, "total_epochs": 2, "pretrained": False,
                           "lr": 0.003, "fine_tune_lr": 0.001},
    "fast_num_workers": 2,  # 05's run after the students' edit
    "num_workers": 2,  # 06's runs (the edit's 16 workers would crowd this machine's cores)
}
GROUP_IDS = {"render": "993", "video": "44", "docker": "988"}

PACKAGES = {  # what apt installs on Ubuntu 24.04 (noble), with its version
    "jq": "1.7.1-3build1", "nvtop": "3.0.2-1", "cmake": "3.28.3-1build7", "g++": "4:13.2.0-7ubuntu1",
    "git": "1:2.43.0-1ubuntu7.3", "libncurses-dev": "6.4+20240113-1ubuntu2", "libdrm-dev": "2.4.122-1~ubuntu0.24.04.1",
    "libsystemd-dev": "255.4-1ubuntu8.10", "curl": "8.5.0-2ubuntu10.6", "ca-certificates": "20240203",
    "nvidia-container-toolkit": "1.17.8-1", "python3": "3.12.3-0ubuntu2", "gnupg": "2.4.4-2ubuntu17.3",
    "build-essential": "12.10ubuntu1",
}
PREINSTALLED = {"git", "curl", "ca-certificates", "python3", "gnupg"}
NVIDIA_PACKAGES = {"nvidia-container-toolkit"}  # only from NVIDIA's apt repository
DEPENDENCIES = {
    "nvidia-container-toolkit": ["libnvidia-container-tools", "libnvidia-container1", "nvidia-container-toolkit-base"],
    "jq": ["libjq1", "libonig5"],
    "nvtop": ["libgbm1"],
    "cmake": ["cmake-data", "libjsoncpp25", "librhash0"],
    "g++": ["g++-13", "libstdc++-13-dev"],
}


class Shell:
    """One command's output: kept, and passed on as it comes when the caller streams it."""

    def __init__(self, node, command: str, out: Callable[[str], None] | None = None,
                 err: Callable[[str], None] | None = None):
        self.node = node
        self.command = command
        self._out, self._err = out, err
        self.stdout: list[str] = []
        self.stderr: list[str] = []

    def say(self, text: str = "", end: str = "\n") -> None:
        text += end
        self.stdout.append(text)
        if self._out:
            self._out(text)

    def warn(self, text: str = "", end: str = "\n") -> None:
        text += end
        self.stderr.append(text)
        if self._err:
            self._err(text)

    # --- the node's state ---------------------------------------------------------------------------

    @property
    def state(self) -> dict:
        state = self.node.state
        state.setdefault("packages", set(PREINSTALLED))
        state.setdefault("groups", set())
        state.setdefault("images", {})  # name -> {"workdir": ...}
        state.setdefault("pulled", set())
        state.setdefault("volumes", set())
        state.setdefault("containers", {})  # name -> container
        state.setdefault("docker", False)
        # Compose: the images `up --build` built, and the services a `compose run` started for its
        # depends_on while the stack itself was down (service -> when), which keep running after it.
        state.setdefault("compose_images", set())
        state.setdefault("run_dependencies", {})
        state.setdefault("root_owned", set())  # folders docker made for a missing bind source: cc cannot write there
        return state

    def expand(self, word: str) -> str:
        """A word as bash passes it on: `~` and `~/...` become /home/cc."""
        if word == "~" or word.startswith("~/"):
            return HOME + word[1:]
        return word

    def path(self, word: str, cwd: str = HOME) -> Path:
        return self.node.path(self.expand(word), cwd)

    def volume(self, name: str) -> Path:
        return self.node.path(f"{VOLUMES}/{name}/_data")


@dataclass(frozen=True)
class Answer:
    name: str
    pattern: re.Pattern
    handler: Callable[[Shell, re.Match], int]
    concurrent: bool = False  # runs without holding the node's lock (long runs)


ANSWERS: list[Answer] = []


def answers(name: str, pattern: str, concurrent: bool = False):
    def register(handler):
        ANSWERS.append(Answer(name, re.compile(pattern, re.S), handler, concurrent))
        return handler
    return register


PIPEFAIL = "set -o pipefail; "  # bash's own option; the answers below fail a pipeline as a whole already


def find(command: str) -> tuple[Answer, re.Match] | None:
    """The answer for `command` (and what its pattern read from it), or None."""
    text = command.strip()
    if text.startswith(PIPEFAIL):
        text = text[len(PIPEFAIL):]
    for candidate in ANSWERS:
        match = candidate.pattern.fullmatch(text)
        if match:
            return candidate, match
    return None


def answer(node, command: str, out=None, err=None) -> tuple[int, str, str, str | None]:
    """(exit status, stdout, stderr, the answer's name) for `command` on `node`, output streamed to out/err."""
    shell = Shell(node, command, out, err)
    found = find(command)
    if found is None:
        shell.warn(NO_ANSWER.format(command=command))
        return 127, "", "".join(shell.stderr), None
    chosen, match = found
    try:
        if chosen.concurrent:
            status = chosen.handler(shell, match)
        else:
            with node.lock:
                status = chosen.handler(shell, match)
    except PermissionError as error:  # a path that leads out of the node
        shell.warn(f"bash: line 1: {error}: Permission denied")
        status = 1
    return status, "".join(shell.stdout), "".join(shell.stderr), chosen.name


def run(node, command: str, out=None, err=None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `command` on `node`."""
    status, stdout, stderr, _ = answer(node, command, out, err)
    return status, stdout, stderr


def shutdown(node) -> None:
    """Everything that runs on the node stops: notebook runs, the tracking stack, the containers."""
    from chi_helpers.local import processes
    from chi_helpers.local import stack as local_stack

    with node.lock:
        running = list(node.processes)
        node.processes = []
        node.state.get("containers", {}).clear()
    for process in running:
        if process.poll() is None:
            processes.stop_tree(process.pid, timeout=5)
        try:
            process.wait(timeout=5)
        except Exception:
            pass
    if local_stack.read_state(node.stack_dir) is not None:
        local_stack.down(node.stack_dir, clock=_quiet_clock())


def _quiet_clock():
    from chi_helpers.progress import Clock

    return Clock(stream=io.StringIO())


def _docker_ready(shell: Shell) -> int:
    """0 when `docker` can be used by cc; otherwise the error bash/docker give, and its status."""
    if not shell.state["docker"]:
        shell.warn("bash: line 1: docker: command not found")
        return 127
    if "docker" not in shell.state["groups"]:
        shell.warn("permission denied while trying to connect to the Docker daemon socket at "
                   "unix:///var/run/docker.sock: Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.51/info\": dial unix "
                   "/var/run/docker.sock: connect: permission denied")
        return 1
    return 0


REMOTE_REPO = node_stack.REMOTE_REPO
ENV_FILE = node_stack.ENV_FILE
BUNDLE = node_setup.BUNDLE
NVIDIA_KEYRING = node_setup.NVIDIA_KEYRING
WORD = r"[^\s'\"]+"


# --- the series' files ---------------------------------------------------------------------------

def _git(repo: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Real git on the node's folder (a bundle is a local file: nothing leaves this machine)."""
    return subprocess.run(["git", "-C", str(repo), *arguments], capture_output=True, text=True)


@answers("check out the uploaded series",
         rf"test -d (?P<dest>{WORD})/\.git \|\| \{{ git clone --quiet (?P<bundle>{WORD}) (?P=dest) && "
         rf"git -C (?P=dest) switch --quiet -c (?P<branch>[\w-]+) && git -C (?P=dest) config user\.name \"\$USER\" && "
         rf"git -C (?P=dest) config user\.email \"\$USER@\$\(hostname\)\"; \}}; "
         rf"git -C (?P=dest) fetch --quiet (?P=bundle) HEAD && \{{ git -C (?P=dest) merge --ff-only --quiet FETCH_HEAD "
         rf"\|\| echo '(?P<kept>[^']+)'; \}} && rm (?P=bundle)")
def check_out(shell: Shell, match: re.Match) -> int:
    dest = shell.path(match["dest"])
    bundle_name = shell.expand(match["bundle"])
    bundle = shell.path(match["bundle"])
    if not (dest / ".git").is_dir():
        if dest.is_dir() and any(dest.iterdir()):
            shell.warn(f"fatal: destination path '{shell.expand(match['dest'])}' already exists and is not an empty directory.")
            dest = None
        elif not bundle.is_file():
            shell.warn(f"fatal: repository '{bundle_name}' does not exist")
            dest = None
        else:
            done = subprocess.run(["git", "clone", "--quiet", str(bundle), str(dest)], capture_output=True, text=True)
            steps = [done] if done.returncode else [
                done, _git(dest, "switch", "--quiet", "-c", match["branch"]),
                _git(dest, "config", "user.name", "cc"),
                _git(dest, "config", "user.email", f"cc@{shell.node.name}")]
            failed = next((step for step in steps if step.returncode), None)
            if failed is not None:
                shell.warn(failed.stderr.rstrip())
                dest = None
    if dest is None or not dest.is_dir():
        if dest is not None:
            shell.warn(f"fatal: cannot change to '{shell.expand(match['dest'])}': No such file or directory")
        return 128
    if not bundle.is_file():
        shell.warn(f"fatal: '{bundle_name}' does not appear to be a git repository")
        return 128
    fetched = _git(dest, "fetch", "--quiet", str(bundle), "HEAD")
    if fetched.returncode:
        shell.warn(fetched.stderr.rstrip())
        return fetched.returncode
    merged = _git(dest, "merge", "--ff-only", "--quiet", "FETCH_HEAD")
    if merged.returncode:
        shell.warn(merged.stderr.rstrip())
        shell.say(match["kept"])
    bundle.unlink()
    return 0


def _git_host(url: str) -> tuple[str | None, str]:
    """(the host a git URL needs, "https" or "ssh"); (None, "local") for a path."""
    found = re.match(r"^[a-z][a-z0-9+.-]*://(?:[^@/]+@)?(?P<host>[^:/]+)", url)
    if found:
        return found["host"], "ssh" if url.startswith(("ssh://", "git+ssh://")) else "https"
    found = re.match(r"^(?:[^@/]+@)?(?P<host>[^:/]+):", url)  # scp-like: git@github.com:owner/repo.git
    if found:
        return found["host"], "ssh"
    return None, "local"


@answers("clone the series",
         rf"test -d (?P<dest>{WORD})/\.git \|\| git clone (?P<repo>{WORD}) (?P=dest); "
         rf"git -C (?P=dest) fetch --depth 1 origin (?P<ref>{WORD}) && git -C (?P=dest) checkout --force FETCH_HEAD"
         rf"(?: && git -C (?P=dest) config user\.name \"\$USER\" && git -C (?P=dest) config user\.email \"\$USER@\$\(hostname\)\")?")
def clone(shell: Shell, match: re.Match) -> int:
    dest_name = shell.expand(match["dest"])
    dest = shell.path(match["dest"])
    repo = match["repo"]
    host, kind = _git_host(repo)

    def unreachable() -> None:
        if kind == "ssh":
            shell.warn(f"ssh: Could not resolve hostname {host}: Temporary failure in name resolution\r\n"
                       "fatal: Could not read from remote repository.\n\n"
                       "Please make sure you have the correct access rights\nand the repository exists.")
        elif kind == "https":
            shell.warn(f"fatal: unable to access '{repo}': Could not resolve host: {host}")
        else:
            shell.warn(f"fatal: repository '{repo}' does not exist")

    if not (dest / ".git").is_dir():
        if dest.is_dir() and any(dest.iterdir()):  # e.g. a copy uploaded earlier
            shell.warn(f"fatal: destination path '{dest_name}' already exists and is not an empty directory.")
            shell.warn("fatal: not a git repository (or any of the parent directories): .git")
            return 128
        shell.warn(f"Cloning into '{dest_name}'...")
        unreachable()  # the twin's nodes reach nothing outside this machine
    if not dest.is_dir():
        shell.warn(f"fatal: cannot change to '{dest_name}': No such file or directory")
        return 128
    unreachable()  # the fetch needs the same host
    return 128


# --- Docker and the GPUs' software ---------------------------------------------------------------

LOCK = "/var/lib/dpkg/lock-frontend"


def _apt_lock(shell: Shell) -> int:
    """0 once apt may run. Right after boot unattended-upgrades holds the lock: apt fails at once unless
    its configuration sets DPkg::Lock::Timeout, then it waits (apt-pkg's own behaviour)."""
    left = shell.node.world.apt_lock_seconds - (time.monotonic() - shell.node.booted)
    if left <= 0:
        return 0
    held = f"Could not get lock {LOCK}. It is held by process 1842 (unattended-upgr)"
    conf = shell.path("/etc/apt/apt.conf.d")
    timeout = re.search(r'DPkg::Lock::Timeout "(\d+)"', "".join(f.read_text() for f in conf.glob("*")) if conf.is_dir() else "")
    if not timeout or int(timeout[1]) < left:
        shell.warn(f"E: {held}\nN: Be aware that removing the lock file is not a solution and may break your system.\n"
                   f"E: Unable to acquire the dpkg frontend lock ({LOCK}), is another process using it?")
        return 100
    shell.warn(f"Waiting for cache lock: {held}... {left:.0f}s")
    time.sleep(left)
    return 0


@answers("install Docker", r"command -v docker >/dev/null \|\| curl -f?sSL https://get\.docker\.com/? \| sudo sh")
def install_docker(shell: Shell, match: re.Match) -> int:
    if shell.state["docker"]:
        return 0
    shell.say("# Executing docker install script, commit: bedc5d6b3e782a5e50d3d2a870f5e1f1b5a38d5c")
    if _apt_lock(shell):
        return 100  # the script stops at its first apt-get
    for line in ("apt-get -qq update >/dev/null",
                 "DEBIAN_FRONTEND=noninteractive apt-get -y -qq install ca-certificates curl >/dev/null",
                 "install -m 0755 -d /etc/apt/keyrings",
                 'curl -fsSL "https://download.docker.com/linux/ubuntu/gpg" -o /etc/apt/keyrings/docker.asc',
                 "chmod a+r /etc/apt/keyrings/docker.asc",
                 'echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu '
                 'noble stable" > /etc/apt/sources.list.d/docker.list',
                 "apt-get -qq update >/dev/null",
                 "DEBIAN_FRONTEND=noninteractive apt-get -y -qq install docker-ce docker-ce-cli containerd.io "
                 "docker-compose-plugin docker-ce-rootless-extras docker-buildx-plugin >/dev/null",
                 "docker version"):
        shell.warn(f"+ sh -c {line}")
    shell.say("Client: Docker Engine - Community\n Version:           28.3.3\n API version:       1.51\n"
              " Go version:        go1.24.5\n OS/Arch:           linux/amd64\n\n"
              "Server: Docker Engine - Community\n Engine:\n  Version:          28.3.3\n"
              "  API version:      1.51 (minimum version 1.24)\n containerd:\n  Version:          1.7.27\n\n"
              "================================================================================\n\n"
              "To run Docker as a non-privileged user, consider setting up the\n"
              "Docker daemon in rootless mode for your user:\n\n    dockerd-rootless-setuptool.sh install\n\n"
              "================================================================================\n")
    shell.state["docker"] = True
    shell.state["packages"] |= {"docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"}
    shell.path("/etc/docker").mkdir(parents=True, exist_ok=True)
    return 0


@answers("apt's lock timeout", rf"echo 'DPkg::Lock::Timeout \"(?P<seconds>\d+)\";' \| sudo tee (?P<conf>{WORD}) >/dev/null")
def apt_lock_timeout(shell: Shell, match: re.Match) -> int:
    conf = shell.path(match["conf"])
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f'DPkg::Lock::Timeout "{match["seconds"]}";\n')
    return 0


@answers("cc in the docker group", r"sudo groupadd -f docker && sudo usermod -aG docker \$USER")
def docker_group(shell: Shell, match: re.Match) -> int:
    shell.state["groups"].add("docker")  # each python-chi command is a new login: it applies at once
    return 0


@answers("the NVIDIA signing key",
         rf"curl -fsSL https://nvidia\.github\.io/libnvidia-container/gpgkey \| sudo gpg --batch --yes --dearmor -o (?P<keyring>{WORD})")
def nvidia_key(shell: Shell, match: re.Match) -> int:
    keyring = shell.path(match["keyring"])
    keyring.parent.mkdir(parents=True, exist_ok=True)
    keyring.write_bytes(b"\x99\x01\x0d\x04twin: the NVIDIA container toolkit's signing key (dearmored)\n")
    return 0


@answers("the NVIDIA apt repository",
         r"curl -fsSL https://nvidia\.github\.io/libnvidia-container/stable/deb/nvidia-container-toolkit\.list \| "
         rf"sed 's#deb https://#deb \[signed-by=(?P<keyring>{WORD})\] https://#g' \| sudo tee (?P<list>{WORD}) >/dev/null")
def nvidia_repository(shell: Shell, match: re.Match) -> int:
    listing = shell.path(match["list"])
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(f"deb [signed-by={match['keyring']}] https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n"
                       "#deb https://nvidia.github.io/libnvidia-container/experimental/deb/$(ARCH) /\n")
    return 0


def _nvidia_source(shell: Shell) -> tuple[bool, bool]:
    """(NVIDIA's apt list is there, its keyring is there)."""
    folder = shell.path("/etc/apt/sources.list.d")
    for listing in folder.glob("*.list") if folder.is_dir() else []:
        text = listing.read_text(errors="replace")
        if "nvidia.github.io/libnvidia-container" in text:
            keyring = re.search(r"signed-by=(\S+?)\]", text)
            return True, bool(keyring) and shell.path(keyring[1]).is_file()
    return False, False


@answers("apt-get install", r"sudo apt-get update -q && sudo apt-get install -yq (?P<packages>[\w.+:~-]+(?: [\w.+:~-]+)*)")
def apt_install(shell: Shell, match: re.Match) -> int:
    if _apt_lock(shell):
        return 100
    listed, signed = _nvidia_source(shell)
    mirrors = ["http://nova.clouds.archive.ubuntu.com/ubuntu noble InRelease",
               "http://nova.clouds.archive.ubuntu.com/ubuntu noble-updates InRelease",
               "http://nova.clouds.archive.ubuntu.com/ubuntu noble-backports InRelease",
               "http://security.ubuntu.com/ubuntu noble-security InRelease"]
    for number, mirror in enumerate(mirrors, 1):
        shell.say(f"Hit:{number} {mirror}")
    if listed:
        nvidia = "https://nvidia.github.io/libnvidia-container/stable/deb/amd64  InRelease"
        if not signed:
            shell.say(f"Get:5 {nvidia} [1477 B]\nErr:5 {nvidia}\n  The following signatures couldn't be verified "
                      "because the public key is not available: NO_PUBKEY DDCAE044F796ECB0\nReading package lists...")
            shell.warn(f"W: GPG error: {nvidia}: The following signatures couldn't be verified because the public key "
                       f"is not available: NO_PUBKEY DDCAE044F796ECB0\nE: The repository '{nvidia}' is not signed.")
            return 100
        shell.say(f"Get:5 {nvidia} [1477 B]\nGet:6 https://nvidia.github.io/libnvidia-container/stable/deb/amd64  "
                  "Packages [21.4 kB]\nFetched 22.9 kB in 1s (25.0 kB/s)")
    shell.say("Reading package lists...\nReading package lists...\nBuilding dependency tree...\nReading state information...")
    wanted = match["packages"].split()
    for package in wanted:
        if package not in PACKAGES or (package in NVIDIA_PACKAGES and not listed):
            shell.warn(f"E: Unable to locate package {package}")
            return 100
    installed = shell.state["packages"]
    new = [p for p in wanted if p not in installed]
    for package in wanted:
        if package in installed:
            shell.say(f"{package} is already the newest version ({PACKAGES[package]}).")
    extra = sorted({d for p in new for d in DEPENDENCIES.get(p, []) if d not in installed})
    if new:
        if extra:
            shell.say("The following additional packages will be installed:\n  " + " ".join(extra))
        shell.say("The following NEW packages will be installed:\n  " + " ".join(sorted(new + extra)))
    shell.say(f"0 upgraded, {len(new) + len(extra)} newly installed, 0 to remove and 0 not upgraded.")
    for package in new + extra:
        version = PACKAGES.get(package, "1.0-1")
        shell.say(f"Selecting previously unselected package {package}.\nPreparing to unpack .../{package}_{version}_amd64.deb ...\n"
                  f"Unpacking {package} ({version}) ...")
    for package in new + extra:
        shell.say(f"Setting up {package} ({PACKAGES.get(package, '1.0-1')}) ...")
    if new:
        shell.say("Processing triggers for man-db (2.12.0-4build2) ...\nProcessing triggers for libc-bin (2.39-0ubuntu8.4) ...")
    installed.update(new + extra)
    return 0


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return None


@answers("Docker's NVIDIA runtime", r"sudo nvidia-ctk runtime configure --runtime=docker")
def nvidia_ctk(shell: Shell, match: re.Match) -> int:
    if "nvidia-container-toolkit" not in shell.state["packages"]:
        shell.warn("sudo: nvidia-ctk: command not found")
        return 1
    config = shell.path("/etc/docker/daemon.json")
    if config.exists():
        shell.warn("INFO[0000] Loading config from /etc/docker/daemon.json")
        current = _read_json(config)
        if current is None:
            shell.warn("ERROR[0000] unable to load config: failed to read config: invalid character in /etc/docker/daemon.json")
            return 1
    else:
        shell.warn("INFO[0000] Config file does not exist; using empty config")
        current = {}
    current.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(current, indent=4) + "\n")
    shell.warn("INFO[0000] Wrote updated config to /etc/docker/daemon.json\n"
               "INFO[0000] It is recommended that docker daemon be restarted.")
    return 0


@answers("merge into Docker's daemon.json",
         r"""sudo jq '\. \+ (?P<object>\{.*\})' (?P<file>/[^\s'"]+) \| sudo tee (?P<new>/[^\s'"]+) >/dev/null """
         r"""&& sudo mv (?P=new) (?P=file)""")
def jq_merge(shell: Shell, match: re.Match) -> int:
    # A pipeline: tee opens (and empties) the new file while jq starts; with pipefail a failing jq
    # fails the pipeline, so `mv` never puts a half-written file in place.
    target, new = shell.path(match["file"]), shell.path(match["new"])
    if not new.parent.is_dir():
        shell.warn(f"tee: {match['new']}: No such file or directory")
        return 1
    new.write_text("")
    if "jq" not in shell.state["packages"]:
        shell.warn("sudo: jq: command not found")
        return 1
    if not target.is_file():
        shell.warn(f"jq: error: Could not open {match['file']}: No such file or directory")
        return 2
    current = _read_json(target)
    try:
        addition = json.loads(match["object"])
    except ValueError:
        shell.warn("jq: error: syntax error in the filter\njq: 1 compile error")
        return 3
    if current is None:
        shell.warn(f"jq: error (at {match['file']}:1): Cannot parse the file as JSON")
        return 2
    new.write_text(json.dumps({**current, **addition}, indent=2) + "\n")
    os.replace(new, target)
    return 0


@answers("restart Docker", r"sudo systemctl restart docker")
def restart_docker(shell: Shell, match: re.Match) -> int:
    if not shell.state["docker"]:
        shell.warn("Failed to restart docker.service: Unit docker.service not found.")
        return 5
    config = shell.path("/etc/docker/daemon.json")
    if config.exists() and _read_json(config) is None:
        shell.warn('Job for docker.service failed because the control process exited with error code.\n'
                   'See "systemctl status docker.service" and "journalctl -xeu docker.service" for details.')
        return 1
    shell.state["docker_config"] = _read_json(config) if config.exists() else {}
    return 0


GPU_MODELS = {  # Blazar's model name -> (nvidia-smi's or rocm-smi's name, memory MiB, power cap W, PCI device)
    "A100": ("NVIDIA A100-PCIE-40GB", 40960, 250, "0x20f1"),
    "H100": ("NVIDIA H100 PCIe", 81559, 350, "0x2331"),
    "MI100": ("Arcturus GL-XL [Instinct MI100]", 32752, 290, "0x738c"),
}
BUSES = ["00000000:21:00.0", "00000000:E2:00.0", "00000000:81:00.0", "00000000:C1:00.0"]


def _row(*fields: tuple[str, str, int]) -> str:
    cells = []
    for left, right, width in fields:
        cells.append(left + " " * max(1, width - len(left) - len(right)) + right)
    return "|" + "|".join(cells) + "|"


@answers("nvidia-smi", r"nvidia-smi")
def nvidia_smi(shell: Shell, match: re.Match) -> int:
    hardware = shell.node.hardware
    if hardware.software != "cuda":
        shell.warn("bash: line 1: nvidia-smi: command not found")
        return 127
    if hardware.vendor != "nvidia":
        shell.say("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
                  "latest NVIDIA driver is installed and running.\n")
        return 9
    name, memory, cap, _ = GPU_MODELS.get(hardware.gpu_model, (f"NVIDIA {hardware.gpu_model}", 40960, 300, ""))
    rule = "+-----------------------------------------+------------------------+----------------------+"
    lines = [time.strftime("%a %b %d %H:%M:%S %Y") + "       ",
             "+-----------------------------------------------------------------------------------------+",
             "| NVIDIA-SMI 570.133.20             Driver Version: 570.133.20     CUDA Version: 12.8     |",
             "|-----------------------------------------+------------------------+----------------------+",
             "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
             "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
             "|                                         |                        |               MIG M. |",
             "|=========================================+========================+======================|"]
    for index in range(hardware.gpus):
        lines += [_row((f" {index:>3}  {name}", "Off ", 41), (f"   {BUSES[index % len(BUSES)]}", "Off ", 24), ("", "0 ", 22)),
                  _row((f" N/A   {31 - index % 3}C    P0", f"{35 + index}W /  {cap}W ", 41), ("", f"1MiB /  {memory}MiB ", 24),
                       ("      0%", "Default ", 22)),
                  _row(("", "", 41), ("", "", 24), ("", "Disabled ", 22)),
                  rule]
    lines += ["                                                                                         ",
              "+-----------------------------------------------------------------------------------------+",
              "| Processes:                                                                              |",
              "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |",
              "|        ID   ID                                                               Usage      |",
              "|=========================================================================================|",
              "|  No running processes found                                                             |",
              "+-----------------------------------------------------------------------------------------+"]
    shell.say("\n".join(lines))
    return 0


@answers("rocm-smi", r"rocm-smi")
def rocm_smi(shell: Shell, match: re.Match) -> int:
    hardware = shell.node.hardware
    if hardware.software != "rocm":
        shell.warn("bash: line 1: rocm-smi: command not found")
        return 127
    if hardware.vendor != "amd":
        shell.warn("ERROR:root:Driver not initialized (amdgpu not found in modules)")
        return 1
    name, memory, cap, device = GPU_MODELS.get(hardware.gpu_model, (hardware.gpu_model, 32752, 290, "0x738c"))
    width = 116
    lines = ["", "", " ROCm System Management Interface ".center(width, "="), " Concise Info ".center(width, "="),
             "Device  Node  IDs              Temp    Power  Partitions          SCLK    MCLK     Fan  Perf  PwrCap  VRAM%  GPU%",
             "              (DID,     GUID)  (Edge)  (Avg)  (Mem, Compute, ID)",
             "=" * width]
    for index in range(hardware.gpus):
        lines.append(f"{index:<8}{index + 2:<6}{device},   {53584 - 33148 * index:<7}{33.0 - index:.1f}°C  {35.0 + index:.1f}W  "
                     f"N/A, N/A, 0         300Mhz  1200Mhz  0%   auto  {cap:.1f}W  0%     0%")
    lines += ["=" * width, " Product Info ".center(width, "=")]
    for index in range(hardware.gpus):
        lines += [f"GPU[{index}]\t\t: Card Series: \t\t{name}", f"GPU[{index}]\t\t: Card Model: \t\t{device}",
                  f"GPU[{index}]\t\t: Card Vendor: \t\tAdvanced Micro Devices, Inc. [AMD/ATI]",
                  f"GPU[{index}]\t\t: Card SKU: \t\tD3431401"]
    lines += ["=" * width, " End of ROCm SMI Log ".center(width, "=")]
    shell.say("\n".join(lines))
    return 0


@answers("build nvtop with AMD support",
         r"command -v nvtop >/dev/null \|\| \(rm -rf (?P<src>/[\w/.-]+) && git clone --depth 1 (?P<repo>\S+) (?P=src) "
         r"&& cmake -S (?P=src) -B (?P=src)/build(?P<options>(?: -D\w+=\w+)*) && sudo cmake --build (?P=src)/build --target install\)")
def build_nvtop(shell: Shell, match: re.Match) -> int:
    packages = shell.state["packages"]
    if "nvtop" in packages:
        return 0
    shell.warn(f"Cloning into '{match['src']}'...")
    for tool in ("cmake", "g++"):
        if tool not in packages:
            shell.warn(f"bash: line 1: {tool}: command not found")
            return 127
    options = " ".join(match["options"].split())
    shell.say("-- The C compiler identification is GNU 13.3.0\n-- Detecting C compiler ABI info - done\n"
              "-- Found PkgConfig: /usr/bin/pkg-config (found version \"1.8.1\")\n"
              f"-- Found Curses: /usr/lib/x86_64-linux-gnu/libcurses.so\n-- Options: {options}\n"
              "-- Configuring done (0.4s)\n-- Generating done (0.0s)\n"
              f"-- Build files have been written to: {match['src']}/build\n"
              "[  5%] Building C object src/CMakeFiles/nvtop.dir/nvtop.c.o\n"
              "[ 50%] Building C object src/CMakeFiles/nvtop.dir/extract_gpuinfo_amdgpu.c.o\n"
              "[100%] Linking C executable nvtop\n[100%] Built target nvtop\nInstall the project...\n"
              "-- Install configuration: \"Release\"\n-- Installing: /usr/local/bin/nvtop")
    packages.add("nvtop")
    return 0


# --- the Jupyter image -----------------------------------------------------------------------------

def _dockerfile(text: str) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile: (INSTRUCTION, arguments), continuation lines joined."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = current.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            current = ""
    return instructions


def _image_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The variables a Dockerfile's ENV lines give every container of the image."""
    env = {}
    for keyword, arguments in instructions:
        if keyword != "ENV":
            continue
        words = shlex.split(arguments)
        if words and "=" not in words[0]:  # the old form: ENV KEY value with spaces
            env[words[0]] = " ".join(words[1:])
        else:
            env.update(word.split("=", 1) for word in words if "=" in word)
    return env


def _build_log(dockerfile_name: str, text: str, image: str) -> tuple[str, str]:
    """(BuildKit's log of a successful build, the image's WORKDIR)."""
    instructions = _dockerfile(text)
    base = next((a for k, a in instructions if k == "FROM"), "scratch")
    workdir = JUPYTER_HOME
    steps = [(k, a) for k, a in instructions if k in ("FROM", "RUN", "COPY", "ADD", "WORKDIR", "ENV", "USER")]
    lines = ['#0 building with "default" instance using docker driver', "",
             f"#1 [internal] load build definition from {Path(dockerfile_name).name}",
             f"#1 transferring dockerfile: {len(text.encode())}B done", "#1 DONE 0.0s", "",
             f"#2 [internal] load metadata for {base}", "#2 DONE 1.1s", "",
             "#3 [internal] load .dockerignore", "#3 transferring context: 2B done", "#3 DONE 0.0s", ""]
    number = 4
    for index, (keyword, arguments) in enumerate(steps, 1):
        if keyword == "WORKDIR":
            workdir = arguments
        lines += [f"#{number} [{index}/{len(steps)}] {keyword} {arguments}", f"#{number} DONE {3.0 * index:.1f}s", ""]
        number += 1
    lines += [f"#{number} exporting to image", f"#{number} exporting layers 21.4s done",
              f"#{number} writing image sha256:{secrets.token_hex(32)} done",
              f"#{number} naming to docker.io/library/{image} done", f"#{number} DONE 21.5s"]
    return "\n".join(lines) + "\n", workdir


def _image_ready(shell: Shell, image: str) -> bool:
    """Is `image` built? A build the twin started finishes `image_build_seconds` after it began: then its
    log is complete and its status file holds 0, as the node's build command leaves them."""
    found = shell.state["images"].get(image)
    if found is None:
        return False
    if found.get("ready_at", 0) > time.time():
        return False
    if found.get("pending_log"):
        shell.path(found["log"]).write_text(found.pop("pending_log"))
        shell.path(found["status"]).write_text("0\n")
    return True


@answers("start the Jupyter image build",
         rf"docker image inspect (?P<image>[\w.-]+) >/dev/null 2>&1 \|\| grep -qx building (?P<status>{WORD}) 2>/dev/null \|\| "
         rf"\(cd (?P<repo>{WORD}) && echo building > (?P=status) && nohup sg docker -c "
         rf"'docker build -t (?P=image) -f (?P<dockerfile>{WORD}) \. ; echo \$\? > (?P=status)' > (?P<log>{WORD}) 2>&1 &\)")
def image_build(shell: Shell, match: re.Match) -> int:
    image = match["image"]
    ready = shell.state["docker"] and "docker" in shell.state["groups"]
    if ready and _image_ready(shell, image):
        return 0  # inspect found it
    status_file = shell.path(match["status"])
    if status_file.is_file() and status_file.read_text().strip() == "building":
        return 0  # grep found a build running
    repo_name = shell.expand(match["repo"])
    repo = shell.path(match["repo"])
    if not repo.is_dir():
        shell.warn(f"bash: line 1: cd: {repo_name}: No such file or directory")
        return 1
    log = shell.path(match["log"])
    log.parent.mkdir(parents=True, exist_ok=True)

    def failed(text: str, status: int) -> int:
        log.write_text(text)
        status_file.write_text(f"{status}\n")
        return 0  # the build runs in the background: the step itself succeeds

    if not shell.state["docker"]:
        return failed("sg: group 'docker' does not exist\n", 127)
    if "docker" not in shell.state["groups"]:
        return failed("ERROR: permission denied while trying to connect to the Docker daemon socket at "
                      "unix:///var/run/docker.sock\n", 1)
    dockerfile = shell.path(match["dockerfile"], cwd=shell.node.shown(repo))
    if not dockerfile.is_file():
        return failed('#0 building with "default" instance using docker driver\n\n'
                      f"#1 [internal] load build definition from {Path(match['dockerfile']).name}\n"
                      "#1 transferring dockerfile: 2B done\n#1 DONE 0.0s\n"
                      f"ERROR: failed to solve: failed to read dockerfile: open {Path(match['dockerfile']).name}: "
                      "no such file or directory\n", 1)
    source = dockerfile.read_text(errors="replace")
    text, workdir = _build_log(match["dockerfile"], source, image)
    status_file.write_text("building\n")
    log.write_text("\n".join(text.splitlines()[:8]) + "\n")  # so far: the base image's metadata
    shell.state["images"][image] = {"workdir": workdir, "dockerfile": match["dockerfile"],
                                    "root_dir": _root_dir(_dockerfile(source)) or workdir,
                                    "env": _image_env(_dockerfile(source)),
                                    "ready_at": time.time() + shell.node.world.image_build_seconds,
                                    "pending_log": text, "log": shell.node.shown(log),
                                    "status": shell.node.shown(status_file)}
    return 0


def _root_dir(instructions: list[tuple[str, str]]) -> str | None:
    """The Jupyter server's root folder when the image's CMD names one (`--ServerApp.root_dir=...`)."""
    for keyword, arguments in instructions:
        found = re.search(r"--ServerApp\.root_dir=([^\s\"',\]]+)", arguments) if keyword == "CMD" else None
        if found:
            return found[1]
    return None


@answers("where the image build stands",
         r"if docker image inspect (?P<image>[\w.-]+) >/dev/null 2>&1; then echo built; "
         rf"else cat (?P<status>{WORD}) 2>/dev/null \|\| echo missing; fi; tail -n 1 (?P<log>{WORD}) 2>/dev/null \|\| true")
def image_state(shell: Shell, match: re.Match) -> int:
    if shell.state["docker"] and "docker" in shell.state["groups"] and _image_ready(shell, match["image"]):
        shell.say("built")
    else:
        status = shell.path(match["status"])
        shell.say(status.read_text().strip() if status.is_file() else "missing")
    log = shell.path(match["log"])
    if log.is_file() and log.read_text(errors="replace").splitlines():
        shell.say(log.read_text(errors="replace").splitlines()[-1])
    return 0


@answers("the end of a file, if there", rf"tail -n (?P<lines>\d+) (?P<path>{WORD}) 2>/dev/null")
def tail_quiet(shell: Shell, match: re.Match) -> int:
    path = shell.path(match["path"])
    if not path.is_file():
        return 1
    return _tail(shell, match["path"], int(match["lines"]))


@answers("docker logs", r"docker logs --tail (?P<lines>\d+) (?P<name>[\w.-]+) 2>&1")
def docker_logs(shell: Shell, match: re.Match) -> int:
    status = _docker_ready(shell)
    if status:
        return status
    if match["name"] not in shell.state["containers"]:
        shell.say(f"Error response from daemon: No such container: {match['name']}")
        return 1
    shell.say("[I ServerApp] Jupyter Server is starting")
    return 0


def _tail(shell: Shell, word: str, lines: int) -> int:
    path = shell.path(word)
    if not path.is_file():
        shell.warn(f"tail: cannot open '{shell.expand(word)}' for reading: No such file or directory")
        return 1
    text = path.read_text(errors="replace").splitlines()
    if lines:
        shell.say("\n".join(text[-lines:]))
    return 0


@answers("tail", rf"tail -n (?P<lines>\d+) (?P<path>{WORD})")
def tail(shell: Shell, match: re.Match) -> int:
    return _tail(shell, match["path"], int(match["lines"]))


@answers("grep", rf"grep -E '(?P<pattern>[^']*)' (?P<path>{WORD})")
def grep(shell: Shell, match: re.Match) -> int:
    """grep's exit status: 0 when a line matched, 1 when none did, 2 when the file is missing."""
    path = shell.path(match["path"])
    if not path.is_file():
        shell.warn(f"grep: {shell.expand(match['path'])}: No such file or directory")
        return 2
    lines = _matching_lines(path, match["pattern"])
    if lines:
        shell.say("\n".join(lines))
    return 0 if lines else 1


@answers("grep a word", rf"grep (?P<pattern>[\w=]+) (?P<path>{WORD})")
def grep_word(shell: Shell, match: re.Match) -> int:
    return grep(shell, match)


def _matching_lines(path: Path, pattern: str) -> list[str]:
    """grep -E's lines (Python's regular expressions agree with ERE on the patterns the helpers send)."""
    return [line for line in path.read_text(errors="replace").splitlines() if re.search(pattern, line)]


# --- the data ----------------------------------------------------------------------------------------

@answers("docker volume create", r"docker volume create (?P<volume>[\w.-]+)")
def volume_create(shell: Shell, match: re.Match) -> int:
    status = _docker_ready(shell)
    if status:
        return status
    shell.volume(match["volume"]).mkdir(parents=True, exist_ok=True)
    shell.state["volumes"].add(match["volume"])
    shell.say(match["volume"])
    return 0


def _compose(shell: Shell, word: str) -> tuple[dict | None, str, Path]:
    """(the Compose file's content, its text, its path); None when it cannot be read (the error said)."""
    import yaml

    path = shell.path(word)
    if not path.is_file():
        shell.warn(f"open {shell.expand(word)}: no such file or directory")
        return None, "", path
    text = path.read_text(errors="replace")
    try:
        return yaml.safe_load(text) or {}, text, path
    except yaml.YAMLError as error:
        shell.warn(f"yaml: {error}")
        return None, text, path


def _project(spec: dict, path: Path) -> str:
    return spec.get("name") or path.parent.name


def _data_job(spec: dict) -> tuple[str, str, str, str] | None:
    """(service, volume, mount point, the folder fetch fills, as the container names it), for the one data job
    the twin knows: `python /opt/food11.py fetch <folder>` with a named volume mounted."""
    for service_name, service in (spec.get("services") or {}).items():
        command = service.get("command") or []
        if isinstance(command, str):
            command = shlex.split(command)
        if len(command) != 4 or command[0] not in ("python", "python3") or not command[1].endswith("food11.py") \
                or command[2] != "fetch":
            continue
        for mount in service.get("volumes") or []:
            source, _, rest = str(mount).partition(":")
            target = rest.split(":")[0]
            if re.fullmatch(r"[\w.-]+", source) and (command[3] == target or command[3].startswith(target + "/")):
                return service_name, source, target, command[3]
    return None


@answers("the data job", rf"docker compose -f (?P<file>{WORD}) run --rm (?P<service>[\w.-]+)(?P<command>(?: {WORD})*)")
def data_job(shell: Shell, match: re.Match) -> int:
    """`compose run --rm`: the job's output as it comes, and its exit status as the command's."""
    from chi_helpers import food11

    status = _docker_ready(shell)
    if status:
        return status
    spec, _, path = _compose(shell, match["file"])
    if spec is None:
        return 1
    job = _data_job(spec)
    if job is None or job[0] != match["service"]:
        if match["service"] not in (spec.get("services") or {}):
            shell.warn(f"no such service: {match['service']}")
            return 1
        shell.warn(NO_ANSWER.format(command=shell.command) + f" (the twin knows only the Food-11 fetch job, "
                   f"not what {shell.expand(match['file'])} runs)")
        return 127
    service, volume, mount, folder = job
    declared = spec.get("volumes") or {}
    if volume in declared and (declared[volume] or {}).get("external") and volume not in shell.state["volumes"]:
        shell.warn(f"external volume \"{volume}\" not found")
        return 1
    project = _project(spec, path)
    shell.warn(f" Network {project}_default  Creating\n Network {project}_default  Created")
    command = match["command"].split()
    if command:  # another command of the job's image: the twin knows `food11.py verify <folder>`
        if len(command) != 4 or command[:2] != ["python", "/opt/food11.py"] or command[2] != "verify" \
                or not (command[3] == mount or command[3].startswith(mount + "/")):
            shell.warn(NO_ANSWER.format(command=shell.command))
            return 127
        root = shell.volume(volume) / command[3][len(mount):].lstrip("/")
        try:
            counts = food11.verify(root)
        except food11.DataLayoutError as error:
            shell.warn(f"error: {str(error).replace(str(shell.volume(volume)), mount)}")
            return 2
        shell.say(food11.describe(counts))
        return 0
    root = shell.volume(volume) / folder[len(mount):].lstrip("/")
    try:
        counts = food11.verify(root)
        shell.say(f"{folder} already holds all {sum(sum(c.values()) for c in counts.values())} photos: nothing to do.")
    except food11.DataLayoutError:
        from chi_helpers.local import sample_data

        if root.exists():
            shutil.rmtree(root)
        shell.say("[   0.0s] downloading the Food-11 archive ...")
        counts = sample_data.make_sample_dataset(root, per_class=dict(SAMPLE_PER_CLASS), image_size=SAMPLE_IMAGE_SIZE)
        shell.say(f"unpacking {folder}/Food-11.zip ...")
        shell.say("organized: " + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()))
    shell.say(food11.describe(counts))
    return 0


# --- the tracking stack ----------------------------------------------------------------------------

@answers("credentials.py", rf"python3 (?P<script>{WORD}/chi_helpers/credentials\.py)(?P<args>(?: {WORD})*)")
def credentials(shell: Shell, match: re.Match) -> int:
    from chi_helpers import network_guard as guard

    script = shell.path(match["script"])
    if not script.is_file():
        shell.warn(f"python3: can't open file '{shell.expand(match['script'])}': [Errno 2] No such file or directory")
        return 2
    arguments = []
    for word in match["args"].split():
        arguments.append(str(shell.path(word)) if word.startswith(("~", "/")) else word)
    env = guard.environment({"HOME": str(shell.node.home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                             "USER": "cc", "LOGNAME": "cc"})
    done = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True,
                          env=env, cwd=shell.node.home, timeout=60)
    if done.stdout:
        shell.say(shell.node.unroot(done.stdout), end="")
    if done.stderr:
        shell.warn(shell.node.unroot(done.stderr), end="")
    return done.returncode


def _env_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _published(service: dict) -> list[str]:
    """Compose's port notation as `docker ps` shows it."""
    shown = []
    for port in service.get("ports") or []:
        parts = str(port).split(":")
        if len(parts) == 3:
            shown.append(f"{parts[0]}:{parts[1]}->{parts[2]}/tcp")
        elif len(parts) == 2:
            shown.append(f"0.0.0.0:{parts[0]}->{parts[1]}/tcp, [::]:{parts[0]}->{parts[1]}/tcp")
    return shown


def _signs_in(services: dict) -> bool:
    command = (services.get("mlflow") or {}).get("command") or []
    words = command if isinstance(command, list) else str(command).split()
    return "--app-name=basic-auth" in words or " ".join(words).find("--app-name basic-auth") >= 0


def _mlflow_port(spec: dict) -> int:
    services = spec.get("services") or {}
    for name, service in services.items():
        if name == "mlflow" or "build" in service:
            for port in service.get("ports") or []:
                parts = str(port).split(":")
                if len(parts) >= 2 and parts[-2].isdigit():
                    return int(parts[-2])
    return 8000


@dataclass
class ComposeProject:
    """A Compose file as `docker compose --env-file ENV -f FILE` reads it."""

    spec: dict
    path: Path  # the Compose file
    env_file: Path
    values: dict[str, str]  # the env file's variables
    name: str
    services: dict  # every service in the file
    active: dict  # those Compose acts on unnamed (`up`, `ps`, `down`): without `profiles`, or with an active one


def _compose_project(shell: Shell, env_word: str, file_word: str) -> tuple[int, ComposeProject | None]:
    """(0, the project), or (the status, None) where Compose refuses the env file or the Compose file (the error said)."""
    status = _docker_ready(shell)
    if status:
        return status, None
    env_file = shell.path(env_word)
    if not env_file.is_file():
        name = shell.expand(env_word)
        shell.warn(f"Failed to load {name}: open {name}: no such file or directory")
        return 1, None
    spec, text, path = _compose(shell, file_word)
    if spec is None:
        return 1, None
    values = _env_values(env_file)
    for required in re.finditer(r"\$\{(?P<name>\w+):\?(?P<message>[^}]*)\}", text):
        if not values.get(required["name"]):
            shell.warn(f"error while interpolating services: required variable {required['name']} is missing a value: "
                       f"{required['message']}")
            return 1, None
    services = spec.get("services") or {}
    # A service with `profiles` is left out unless one of them is active (COMPOSE_PROFILES, from the shell or the
    # env file: docs.docker.com/compose/how-tos/environment-variables/envvars/) or the command names it
    # (`run archive`): https://docs.docker.com/reference/compose-file/profiles/
    chosen = {p.strip() for p in values.get("COMPOSE_PROFILES", "").split(",") if p.strip()}
    active = {name: service for name, service in services.items()
              if not service.get("profiles") or chosen & set(service["profiles"])}
    return 0, ComposeProject(spec, path, env_file, values, _project(spec, path), services, active)


@answers("the tracking stack",
         rf"docker compose --env-file (?P<env>{WORD}) -f (?P<file>{WORD}) (?P<action>up -d --build --wait|ps|down)")
def tracking_stack(shell: Shell, match: re.Match) -> int:
    from chi_helpers.local import stack as local_stack

    status, compose = _compose_project(shell, match["env"], match["file"])
    if status:
        return status
    project, services = compose.name, compose.active  # the `archive` service (profile "archive") is not among them
    action = match["action"].split()[0]
    current = local_stack.read_state(shell.node.stack_dir)
    running = current is not None and current.is_healthy()
    by_run = shell.state["run_dependencies"]  # started by `compose run archive` while the stack was down
    if action == "ps":
        rows = [("NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS")]
        listed = {name: current.started_at for name in services} if running else \
            {name: since for name, since in by_run.items() if name in services}
        for name, since in listed.items():
            service = services[name]
            if str(service.get("restart", "")) == "no":
                continue  # one-shot: exited, so `ps` leaves it out
            age = _age(time.time() - since)
            command = service.get("command") or service.get("entrypoint") or ["/usr/bin/docker-entrypoint.sh"]
            command = " ".join(command) if isinstance(command, list) else str(command)
            command = f'"{command[:19]}…"' if len(command) > 20 else f'"{command}"'
            healthy = " (healthy)" if service.get("healthcheck") else ""
            rows.append((f"{project}-{name}-1", service.get("image", f"{project}-{name}"), command, name,
                         f"{age} ago", f"Up {age}{healthy}", ", ".join(_published(service))))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            shell.say("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        return 0
    if action == "down":
        if current is None and not by_run:
            shell.warn(f'Warning: No resource found to remove for project "{project}".')
            return 0
        if current is not None:
            local_stack.down(shell.node.stack_dir, clock=_quiet_clock())
        removed = list(services) if current is not None else [name for name in services if name in by_run]
        by_run.clear()
        for name in removed:
            container = f"{project}-{name}-1"
            shell.warn(f" Container {container}  Stopping\n Container {container}  Stopped\n"
                       f" Container {container}  Removing\n Container {container}  Removed")
        shell.warn(f" Network {project}_default  Removing\n Network {project}_default  Removed")
        return 0
    # up -d --build --wait
    if running:
        for name, service in services.items():
            state = "Exited" if str(service.get("restart", "")) == "no" else "Running"
            shell.warn(f" Container {project}-{name}-1  {state}")
        return 0
    for name, service in services.items():
        if "build" in service:
            shell.warn(f"[+] Building 1/1\n ✔ {name}  Built")
            shell.state["compose_images"].add(service.get("image") or f"{project}-{name}")
        elif service.get("image") and service["image"] not in shell.state["pulled"]:
            shell.warn(f" {name} Pulled")
            shell.state["pulled"].add(service["image"])
    if not by_run:  # a `compose run` made the network already
        shell.warn(f" Network {project}_default  Creating\n Network {project}_default  Created")
    for volume in compose.spec.get("volumes") or {}:
        shell.warn(f' Volume "{project}_{volume}"  Creating\n Volume "{project}_{volume}"  Created')
    # `--wait` takes a service that exits for a failure, unless a running one waits for it to complete.
    completed = {name for service in services.values() for name, condition in
                 ((service.get("depends_on") or {}).items() if isinstance(service.get("depends_on"), dict) else [])
                 if (condition or {}).get("condition") == "service_completed_successfully"}
    orphans = [name for name, service in services.items() if str(service.get("restart", "")) == "no" and name not in completed]
    try:
        # MLflow with the Compose file's own options, filled in from the env file (allowed hosts, CORS origin,
        # the auth app with the env file's admin account); artifacts on the node's disk, not in a bucket.
        flags = [flag for flag in compose_file.mlflow_server_flags(compose.values, compose.path)
                 if not flag.startswith("--artifacts-destination=")]
        local_stack.up(shell.node.stack_dir, host=shell.node.address, port=_mlflow_port(compose.spec),
                       env={"MLFLOW_DISABLE_TELEMETRY": "true"}, flags=flags,
                       auth_file=compose.env_file if _signs_in(services) else None,
                       clock=_quiet_clock())
    except (local_stack.StackError, compose_file.ComposeFileError) as error:
        shell.warn(f"Error response from daemon: the twin's MLflow server did not start for {project}: {error}")
        return 1
    for name, service in services.items():
        container = f"{project}-{name}-1"
        if name in by_run:
            shell.warn(f" Container {container}  Running")
            continue
        shell.warn(f" Container {container}  Created\n Container {container}  Started")
        if str(service.get("restart", "")) == "no":
            shell.warn(f" Container {container}  Exited")
        elif service.get("healthcheck"):
            shell.warn(f" Container {container}  Waiting\n Container {container}  Healthy")
    by_run.clear()  # part of the running stack now
    if orphans:  # docker/compose#10596
        shell.warn(f"container {project}-{orphans[0]}-1 exited (0)")
        return 1
    return 0


# --- the archive service: the stack's history to a file, and back ---------------------------------------

ARCHIVE_ENTRYPOINT = ["python", "-m", "chi_helpers.archive"]  # the series' own code, in the server's image


def _interpolate(text: str, values: dict[str, str]) -> str:
    """One value as Compose interpolates it from the env file: `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `$VAR` and `$$` (the `:?` forms were checked before)."""
    def one(found: re.Match) -> str:
        if found["escaped"]:
            return "$"
        name = found["name"] or found["bare"]
        value = values.get(name)
        if found["op"] == ":-" and not value or found["op"] == "-" and value is None:
            return found["default"]
        return value or ""

    return re.sub(r"(?P<escaped>\$\$)|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}|\$(?P<bare>\w+)",
                  one, text)


def _bind_mounts(shell: Shell, compose: ComposeProject, service: dict) -> list[tuple[str, Path, bool]]:
    """(target, source on the node, read-only) for each bind mount of `service`, the source as Compose resolves
    it: variables from the env file, `~` the home, a relative path from the Compose file's folder."""
    folder = shell.node.shown(compose.path.parent)
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type") != "bind":
                continue
            source, target = _interpolate(str(entry["source"]), compose.values), entry["target"]
            read_only = bool(entry.get("read_only"))
        else:
            parts = _interpolate(str(entry), compose.values).split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            if not source.startswith(("/", ".", "~")):
                continue  # a named volume
        mounts.append((target.rstrip("/") or "/", shell.node.path(shell.expand(source), cwd=folder), read_only))
    return mounts


def _mounted(mounts: list[tuple[str, Path, bool]], path: str) -> tuple[Path, str, bool] | None:
    """(where `path` in the container lives on the node, its mount's target, read-only), or None outside every mount."""
    best = None
    for target, source, read_only in mounts:
        if path == target or path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[1]):
                best = (source / path[len(target):].lstrip("/"), target, read_only)
    return best


def _service_env(compose: ComposeProject, service: dict) -> dict[str, str]:
    given = service.get("environment") or {}
    if isinstance(given, list):
        given = dict(item.split("=", 1) if "=" in item else (item, "") for item in given)
    return {key: _interpolate(str(value), compose.values) for key, value in given.items()}


def _dependencies(spec: dict, name: str) -> dict[str, dict]:
    """{service: its condition} for `name`'s depends_on, theirs after them (what `compose run` starts)."""
    found: dict[str, dict] = {}
    waiting = [name]
    while waiting:
        depends = ((spec.get("services") or {}).get(waiting.pop()) or {}).get("depends_on") or {}
        for other, condition in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            if other not in found:
                found[other] = condition or {}
                waiting.append(other)
    return found


def _start_dependencies(shell: Shell, compose: ComposeProject, name: str, running: bool) -> dict[str, dict]:
    """`compose run` starts the service's depends_on first (docker/compose pkg/compose/run.go: prepareRun calls
    startDependencies, then looks for the image, then waits for the conditions and creates the container). The
    `archive` service depends on PostgreSQL and MinIO, not on the MLflow server: on a node whose stack is down
    they start again on their volumes (the history `down` kept) and stay up after the run. The twin's stack is
    one process that holds all three; it records them as started, for `ps`, `up` and `down`."""
    by_run = shell.state["run_dependencies"]
    project = compose.name
    needed = _dependencies(compose.spec, name)
    fresh = [other for other in needed if not running and other not in by_run]
    if fresh and not by_run:
        shell.warn(f" Network {project}_default  Creating\n Network {project}_default  Created")
    for other in needed:
        container = f"{project}-{other}-1"
        if other not in fresh:
            shell.warn(f" Container {container}  Running")
            continue
        image = (compose.services.get(other) or {}).get("image")
        if image and image not in shell.state["pulled"]:
            shell.warn(f" {other} Pulled")
            shell.state["pulled"].add(image)
        shell.warn(f" Container {container}  Creating\n Container {container}  Created\n"
                   f" Container {container}  Starting\n Container {container}  Started")
        by_run[other] = time.time()
    return needed


def _wait_for(shell: Shell, compose: ComposeProject, needed: dict[str, dict]) -> None:
    for other, condition in needed.items():
        if condition.get("condition") == "service_healthy":
            shell.warn(f" Container {compose.name}-{other}-1  Waiting\n Container {compose.name}-{other}-1  Healthy")


class _Lines:
    """A stream for `chi_helpers.progress.Clock`: each whole line to `emit`, the node's paths as the container names them."""

    def __init__(self, emit: Callable[[str], None], rename: Callable[[str], str]):
        self.emit, self.rename, self.pending = emit, rename, ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self.emit(self.rename(line))
        return len(text)

    def flush(self) -> None:
        pass


def _archive_parser():
    """The arguments as chi_helpers/archive/__main__.py's argparse takes them; a usage error raises ValueError."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(f"{self.format_usage()}{self.prog}: error: {message}")

    parser = Parser(prog="python -m chi_helpers.archive", add_help=False)
    parser.add_argument("action", choices=["make", "restore"])
    parser.add_argument("archive")
    parser.add_argument("--runs-only", action="store_true")
    parser.add_argument("--merge", action="store_true")
    return parser


@answers("the archive service",
         rf"mkdir -p (?P<folder>[\w./~-]+) && docker compose --env-file (?P<env>{WORD}) -f (?P<file>{WORD}) run --rm "
         rf"--user \"\$\(id -u\):\$\(id -g\)\" (?P<service>[\w.-]+)(?P<arguments>(?: {WORD})*)")
def archive_service(shell: Shell, match: re.Match) -> int:
    """`compose run --rm --user cc archive make|restore /archives/NAME`: the series' archive code, run for real
    against the twin's stack (its SQLite database, artifact folder and accounts), the archive in the folder the
    Compose file mounts at /archives (~/mlflow-archives unless the env file sets MLFLOW_ARCHIVE_DIR). The file is
    written with cc's uid, as `--user "$(id -u):$(id -g)"` has it on the node: SFTP reads it, and reads one put there."""
    from chi_helpers.local import stack as local_stack

    status = _mkdir(shell, [match["folder"]])
    if status:
        return status
    status, compose = _compose_project(shell, match["env"], match["file"])
    if status:
        return status
    name = match["service"]
    service = compose.services.get(name)  # named by the command: Compose runs it whatever its profiles
    if service is None:
        shell.warn(f"no such service: {name}")
        return 1
    entrypoint = service.get("entrypoint") or []
    if (shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)) != ARCHIVE_ENTRYPOINT:
        shell.warn(NO_ANSWER.format(command=shell.command) + f" (the twin runs only the series' archive service, "
                   f"{' '.join(ARCHIVE_ENTRYPOINT)}, not what {name} runs in {shell.expand(match['file'])})")
        return 127
    current = local_stack.read_state(shell.node.stack_dir)
    needed = _start_dependencies(shell, compose, name, running=current is not None and current.is_healthy())
    image = service.get("image") or f"{compose.name}-{name}"
    if image not in shell.state["compose_images"]:  # built by `up --build`: a node whose stack never came up lacks it
        if service.get("pull_policy") == "never":
            shell.warn(f"Error response from daemon: No such image: {image}")
        else:
            shell.warn(f"Error response from daemon: pull access denied for {image.split(':')[0]}, repository does "
                       f"not exist or may require 'docker login': denied: requested access to the resource is denied")
        return 1
    _wait_for(shell, compose, needed)

    mounts = _bind_mounts(shell, compose, service)
    for _, source, _ in mounts:  # docker makes a missing bind source, owned by root
        if not source.exists():
            source.mkdir(parents=True)
            shell.state["root_owned"].add(str(source))
    code = [_mounted(mounts, entry) for entry in _service_env(compose, service).get("PYTHONPATH", "").split(":")
            if entry]
    if not any(place and (place[0] / "chi_helpers" / "archive" / "__main__.py").is_file() for place in code):
        shell.warn("/usr/local/bin/python: No module named chi_helpers.archive")
        return 1
    try:
        arguments = _archive_parser().parse_args(match["arguments"].split())
    except ValueError as usage:
        shell.warn(str(usage).rstrip("\n"))
        return 2
    inside = posixpath.normpath(posixpath.join("/", arguments.archive))  # the image's working folder is /
    place = _mounted(mounts, inside)
    if place is None:
        shell.warn(NO_ANSWER.format(command=shell.command) + f" ({inside} is in none of the service's bind mounts: the "
                   f"file would go with the container, which --rm removes)")
        return 127
    local, _, read_only = place

    def rename(text: str) -> str:  # the node's folders as the container sees them
        for mount_target, source, _ in sorted(mounts, key=lambda m: -len(str(m[1]))):
            for shown in dict.fromkeys((str(source), os.path.realpath(source))):
                text = text.replace(shown, mount_target)
        return shell.node.unroot(text)

    if arguments.action == "make" and (read_only or str(local.parent) in shell.state["root_owned"]):
        # What Python in the container meets writing there: a read-only mount, or a folder docker made as root.
        why = "[Errno 30] Read-only file system" if read_only else "[Errno 13] Permission denied"
        shell.warn(f"Traceback (most recent call last):\n  ...\n{'OSError' if read_only else 'PermissionError'}: "
                   f"{why}: '{PurePosixPath(inside).parent}'")
        return 1
    return _run_archive(shell, arguments, local, rename)


def _run_archive(shell: Shell, arguments, local: Path, rename: Callable[[str], str]) -> int:
    """`python -m chi_helpers.archive` as chi_helpers/archive/__main__.py runs it, against the twin's stack."""
    import traceback

    from chi_helpers.archive import location, manifest
    from chi_helpers.archive import make as archive_make
    from chi_helpers.archive import restore as archive_restore
    from chi_helpers.progress import Clock

    clock = Clock(stream=_Lines(shell.say, rename))
    try:
        where = location.from_state_dir(shell.node.stack_dir)
        if arguments.action == "make":
            archive_make.make(where, local, runs_only=arguments.runs_only, clock=clock)
        else:
            archive_restore.restore(local, where, merge=arguments.merge, clock=clock)
    except (manifest.ArchiveError, FileExistsError, FileNotFoundError, ValueError) as error:  # as __main__.py
        shell.warn(f"error: {rename(str(error))}")
        return 2
    except Exception as error:  # anything else: Python's traceback and status
        shell.warn(rename("".join(traceback.format_exception(error))), end="")
        return 1
    return 0


@answers("ln -f", rf"ln -f (?P<source>{WORD}) (?P<target>{WORD})")
def hard_link(shell: Shell, match: re.Match) -> int:
    """coreutils' ln: a hard link, replacing the target (-f); the source must exist."""
    source, target = shell.path(match["source"]), shell.path(match["target"])
    if not source.exists():
        shell.warn(f"ln: failed to access '{shell.expand(match['source'])}': No such file or directory")
        return 1
    if not target.parent.is_dir():
        shell.warn(f"ln: failed to create hard link '{shell.expand(match['target'])}': No such file or directory")
        return 1
    target.unlink(missing_ok=True)
    os.link(source, target)
    return 0


@answers("mkdir -p", r"mkdir -p (?P<paths>[\w./~-]+(?: [\w./~-]+)*)")
def mkdir(shell: Shell, match: re.Match) -> int:
    return _mkdir(shell, match["paths"].split())


def _mkdir(shell: Shell, words: list[str]) -> int:
    status = 0
    for word in words:
        try:
            shell.path(word).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:
            reason = "File exists" if isinstance(error, FileExistsError) else "Not a directory"
            shell.warn(f"mkdir: cannot create directory ‘{shell.expand(word)}’: {reason}")
            status = 1
    return status


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, int(seconds))} seconds"
    if seconds < 3600:
        minutes = int(seconds // 60)
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = int(seconds // 3600)
    return "About an hour" if hours == 1 else f"{hours} hours"


# --- the Jupyter container ---------------------------------------------------------------------------

def _shell_words(shell: Shell, text: str) -> list[str]:
    """bash's words for `text`: `$(getent group X | cut -d: -f3)` replaced by X's id, `<(grep -E 'RE' FILE)` by
    a file of FILE's matching lines (bash's /dev/fd/N), quotes removed, ~ expanded."""
    text = re.sub(r"\$\(getent group (\w+) \| cut -d: -f3\)", lambda m: GROUP_IDS.get(m[1], ""), text)
    text = re.sub(r"<\(grep -E '(?P<pattern>[^']*)' (?P<file>\S+)\)", lambda m: _grep_substitution(shell, m), text)
    return [shell.expand(word) for word in shlex.split(text)]


def _grep_substitution(shell: Shell, match: re.Match) -> str:
    source = shell.path(match["file"])
    lines = _matching_lines(source, match["pattern"]) if source.is_file() else []
    if not source.is_file():
        shell.warn(f"grep: {shell.expand(match['file'])}: No such file or directory")
    fd = shell.node.home / ".twin-fd" / secrets.token_hex(4)
    fd.parent.mkdir(exist_ok=True)
    fd.write_text("".join(line + "\n" for line in lines))
    fd.chmod(0o600)
    return str(fd)


def _options(words: list[str], with_value: set[str], flags: set[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """docker's options up to the first other word: ([(option, value)], the rest); ValueError for an unknown flag."""
    found = []
    index = 0
    while index < len(words) and words[index].startswith("-"):
        word = words[index]
        name, equals, value = word.partition("=")
        if name in with_value:
            if not equals:
                index += 1
                if index >= len(words):
                    raise ValueError(f"flag needs an argument: {name}")
                value = words[index]
            found.append((name, value))
        elif word in flags:
            found.append((word, None))
        else:
            raise ValueError(f"unknown flag: {name}")
        index += 1
    return found, words[index:]


RUN_WITH_VALUE = {"--name", "-p", "--publish", "--shm-size", "--gpus", "--device", "--group-add", "-v", "--volume", "-e",
                  "--env", "--env-file", "-w", "--workdir", "--network", "-u", "--user", "--hostname", "-h", "--ipc",
                  "--pull"}
RUN_FLAGS = {"-d", "--detach", "--rm", "-i", "--interactive", "-t", "--tty", "-it", "-ti", "--init"}
EXEC_WITH_VALUE = {"-w", "--workdir", "-e", "--env", "-u", "--user"}
EXEC_FLAGS = {"-i", "--interactive", "-t", "--tty", "-it", "-ti", "-d", "--detach"}


@answers("start the Jupyter container",
         r"(?:docker ps -q --filter name=\^(?P<unless>[\w.-]+)\$ \| grep -q \. \|\| )?docker run (?P<arguments>.+)")
def docker_run(shell: Shell, match: re.Match) -> int:
    status = _docker_ready(shell)
    if status:
        return status
    if match["unless"] and match["unless"] in shell.state["containers"]:
        return 0  # `docker ps` found it running: grep succeeds, nothing else runs
    try:
        options, rest = _options(_shell_words(shell, match["arguments"]), RUN_WITH_VALUE, RUN_FLAGS)
    except ValueError as error:
        shell.warn(f"{error}\nSee 'docker run --help'.")
        return 125
    if not rest:
        shell.warn('"docker run" requires at least 1 argument.\nSee \'docker run --help\'.')
        return 125
    image, command = rest[0], rest[1:]
    names = dict(options)
    if image.split(":")[0] not in shell.state["images"] or not _image_ready(shell, image.split(":")[0]):
        if names.get("--pull") == "never":
            shell.warn(f"docker: Error response from daemon: No such image: {image}:latest.\n\n"
                       "Run 'docker run --help' for more information")
            return 125
        if image.split(":")[0] in ("jupyter-mlflow",) or "/" not in image:
            shell.warn(f"Unable to find image '{image}:latest' locally\ndocker: Error response from daemon: pull access "
                       f"denied for {image}, repository does not exist or may require 'docker login': denied: requested "
                       "access to the resource is denied\n\nRun 'docker run --help' for more information")
            return 125
        shell.warn(NO_ANSWER.format(command=shell.command) + f" (the twin runs only images built on the node, not {image})")
        return 127
    if command or ("-d" not in names and "--detach" not in names):
        shell.warn(NO_ANSWER.format(command=shell.command) + " (the twin runs only the Jupyter image, detached, with its own command)")
        return 127
    containers = shell.state["containers"]
    name = names.get("--name") or f"twin_{secrets.token_hex(3)}"
    if name in containers:
        shell.warn(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use by '
                   f'container "{containers[name]["id"]}". You have to remove (or rename) that container to be able to '
                   "reuse that name.\n\nRun 'docker run --help' for more information")
        return 125
    hardware = shell.node.hardware
    for option, value in options:
        if option == "--gpus" and (hardware.vendor != "nvidia" or "nvidia-container-toolkit" not in shell.state["packages"]):
            shell.warn('docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].\n\n'
                       "Run 'docker run --help' for more information")
            return 125
        if option == "--device" and value.startswith(("/dev/kfd", "/dev/dri")) and hardware.vendor != "amd":
            shell.warn(f'docker: Error response from daemon: error gathering device information while adding custom device '
                       f'"{value}": no such file or directory.\n\nRun \'docker run --help\' for more information')
            return 125
        if option == "--group-add" and not value:
            shell.warn("docker: Error response from daemon: Unable to find group : no matching entries in group file.\n\n"
                       "Run 'docker run --help' for more information")
            return 126
    published = {v.split(":")[-2] for o, v in options if o in ("-p", "--publish") and ":" in v}
    for other in containers.values():
        taken = published & other["published"]
        if taken:
            port = sorted(taken)[0]
            shell.warn(f"docker: Error response from daemon: driver failed programming external connectivity on endpoint "
                       f"{name}: Bind for 0.0.0.0:{port} failed: port is already allocated.\n\n"
                       "Run 'docker run --help' for more information")
            return 125
    mounts, env = [], dict(shell.state["images"][image.split(":")[0]].get("env") or {})
    for option, value in options:
        if option in ("-v", "--volume"):
            parts = value.split(":")
            if len(parts) < 2:
                shell.warn(f"docker: invalid spec: {value}: empty section between colons.")
                return 125
            source, target = parts[0], parts[1]
            if source.startswith("/"):
                local = shell.path(source)
            else:
                local = shell.volume(source)
                shell.state["volumes"].add(source)
            local.mkdir(parents=True, exist_ok=True)  # docker makes a missing bind source (and a new volume)
            mounts.append((target.rstrip("/") or "/", str(local)))
        elif option in ("-e", "--env"):
            key, _, value_ = value.partition("=")
            env[key] = value_
        elif option == "--env-file":
            env_file = Path(value)
            if not env_file.is_file():
                shell.warn(f"docker: open {value}: no such file or directory.\nSee 'docker run --help'.")
                return 125
            env.update(_env_values(env_file))
    ident = secrets.token_hex(32)
    containers[name] = {"name": name, "id": ident, "image": image, "mounts": mounts, "env": env,
                        "workdir": shell.state["images"][image.split(":")[0]]["workdir"], "published": published,
                        "root_dir": shell.state["images"][image.split(":")[0]]["root_dir"],
                        # Docker's GPU flags gave it the host's GPUs (checked against the host above).
                        "gpus": any(o == "--gpus" or (o == "--device" and v == "/dev/kfd") for o, v in options),
                        "token": secrets.token_hex(24), "processes": [], "started": time.time()}
    shell.say(ident)
    return 0


def _in_container(container: dict, path: str) -> Path | None:
    """Where a path inside the container lives on the node (its mounts), or None outside every mount."""
    best = None
    for target, local in container["mounts"]:
        if path == target or path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[0]):
                best = (target, local)
    if best is None:
        return None
    rest = path[len(best[0]):].lstrip("/")
    return Path(best[1]) / rest if rest else Path(best[1])


def _python_path(container: dict, value: str) -> list[str]:
    """The container's PYTHONPATH on the node: an entry inside a mount maps through it; an entry whose
    children are mounts (/home/jovyan, holding the chi_helpers mount) maps to where those children come from."""
    mapped = []
    for entry in filter(None, value.split(":")):
        local = _in_container(container, entry)
        if local is not None:
            mapped.append(str(local))
            continue
        for target, source in container["mounts"]:
            if str(PurePosixPath(target).parent) == entry.rstrip("/") and Path(source).name == PurePosixPath(target).name:
                mapped.append(str(Path(source).parent))
    return list(dict.fromkeys(mapped))


@answers("docker exec", r"docker exec (?P<arguments>.+)", concurrent=True)
def docker_exec(shell: Shell, match: re.Match) -> int:
    with shell.node.lock:
        status = _docker_ready(shell)
        if status:
            return status
        try:
            options, rest = _options(_shell_words(shell, match["arguments"]), EXEC_WITH_VALUE, EXEC_FLAGS)
        except ValueError as error:
            shell.warn(f"{error}\nSee 'docker exec --help'.")
            return 125
        if len(rest) < 2:
            shell.warn('"docker exec" requires at least 2 arguments.\nSee \'docker exec --help\'.')
            return 125
        name, command = rest[0], rest[1:]
        container = shell.state["containers"].get(name)
        if container is None:
            shell.warn(f"Error response from daemon: No such container: {name}")
            return 1
        workdir = dict(options).get("-w") or dict(options).get("--workdir") or container["workdir"]
        extra_env = dict(value.partition("=")[::2] for option, value in options if option in ("-e", "--env"))
    if command[:3] == ["jupyter", "server", "list"] and command[3:] in ([], ["--json"]):
        # A server lists itself only once it has started, seconds after `docker run -d`; it names the
        # container's host name (its id), which nobody outside the container can use.
        up = time.time() - container["started"] >= shell.node.world.jupyter_start_seconds
        url = f"http://{container['id'][:12]}:8888/"
        if command[3:] == ["--json"]:
            if up:
                shell.say(json.dumps({"base_url": "/", "hostname": "0.0.0.0", "password": False, "pid": 7,
                                      "port": 8888, "root_dir": container["root_dir"], "secure": False, "sock": "",
                                      "token": container["token"], "url": url, "version": "2.16.0"}))
            return 0
        shell.say("Currently running servers:")
        if up:
            shell.say(f"{url}?token={container['token']} :: {container['root_dir']}")
        return 0
    if command[0] == "papermill":
        return _papermill(shell, container, workdir, {**container["env"], **extra_env}, command[1:])
    shell.warn(NO_ANSWER.format(command=shell.command))
    return 127


def _resolve(value: str):
    """papermill's CLI reading of a `-p` value."""
    if value in ("True", "False"):
        return value == "True"
    if value == "None":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


PAPERMILL_SCRIPT = r"""
import json, logging, sys
spec = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(message)s")  # what papermill's CLI says (Input/Output Notebook)
import papermill
declared = papermill.inspect_notebook(spec["input"])
parameters = dict(spec["parameters"])
parameters.update({k: v for k, v in spec["twin"].items() if k in declared and k not in parameters})
papermill.execute_notebook(spec["input"], spec["output"], parameters=parameters, kernel_name=spec["kernel"],
                           progress_bar=spec["progress_bar"], log_output=spec["log_output"],
                           request_save_on_cell_execute=True,
                           kernel_manager_class="chi_helpers.series.quiet_kernel.QuietKernelManager")
"""


def _papermill(shell: Shell, container: dict, workdir: str, container_env: dict, arguments: list[str]) -> int:
    """papermill inside the container, run for real on the node's copy with the container's environment."""
    from chi_helpers import network_guard as guard

    node = shell.node
    cwd = _in_container(container, workdir)
    if cwd is None or not cwd.is_dir():
        shell.warn("OCI runtime exec failed: exec failed: unable to start container process: chdir to cwd "
                   f"(\"{workdir}\") set in config.json failed: no such file or directory: unknown")
        return 126
    positional, parameters, kernel, progress, log_output = [], {}, None, True, False
    index = 0
    while index < len(arguments):
        word = arguments[index]
        if word in ("-p", "--parameters", "-r", "--parameters_raw"):
            if index + 2 >= len(arguments):
                shell.warn(f"Error: Option '{word}' requires 2 arguments.")
                return 2
            key, value = arguments[index + 1], arguments[index + 2]
            parameters[key] = _resolve(value) if word in ("-p", "--parameters") else value
            index += 3
        elif word in ("-y", "--parameters_yaml") and index + 1 < len(arguments):
            import yaml

            parameters.update(yaml.safe_load(arguments[index + 1]) or {})
            index += 2
        elif word in ("-k", "--kernel") and index + 1 < len(arguments):
            kernel = arguments[index + 1]
            index += 2
        elif word == "--no-progress-bar":
            progress, index = False, index + 1
        elif word == "--progress-bar":
            progress, index = True, index + 1
        elif word == "--log-output":
            log_output, index = True, index + 1
        elif word.startswith("-"):
            shell.warn(NO_ANSWER.format(command=shell.command) + f" (the twin's papermill does not know {word})")
            return 127
        else:
            positional.append(word)
            index += 1
    if len(positional) != 2:
        shell.warn("Usage: papermill [OPTIONS] NOTEBOOK_PATH [OUTPUT_PATH]\nTry 'papermill --help' for help.\n\n"
                   "Error: the twin runs papermill with an input and an output notebook")
        return 2
    home = node.folder / "containers" / container["name"] / "home"
    home.mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONUNBUFFERED": "1"}
    for key, value in container_env.items():
        if key == "PYTHONPATH":
            env[key] = os.pathsep.join(_python_path(container, value))
        elif value.startswith("/") and _in_container(container, value) is not None:
            env[key] = str(_in_container(container, value))
        else:
            env[key] = value
    env = guard.environment(env)
    twin = dict(TWIN_NOTEBOOK_PARAMETERS)
    if container.get("gpus"):
        # The container has the host's GPUs, but PyTorch here runs on a machine without any: the notebook
        # expects what it can see. Without Docker's GPU flags the notebook's own count stands, and its
        # check stops the run as on a real node.
        twin["expected_gpus"] = 0
    spec = {"input": positional[0], "output": positional[1], "parameters": parameters,
            "twin": twin, "kernel": kernel, "progress_bar": progress, "log_output": log_output}
    process = node.spawn([sys.executable, "-c", PAPERMILL_SCRIPT, json.dumps(spec)], cwd=str(cwd), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    with node.lock:
        container["processes"].append(process)
    readers = [threading.Thread(target=_forward, args=(process.stdout, shell.say), daemon=True),
               threading.Thread(target=_forward, args=(process.stderr, shell.warn), daemon=True)]
    for reader in readers:
        reader.start()
    status = process.wait()
    for reader in readers:
        reader.join(timeout=10)
    with node.lock:
        if process in container["processes"]:
            container["processes"].remove(process)
    return status if status >= 0 else 128 - status  # killed (the container stopped): 137, as docker exec says


def _forward(stream, emit) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        while True:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            text = decoder.decode(chunk)
            if text:
                emit(text, end="")
        rest = decoder.decode(b"", final=True)
        if rest:
            emit(rest, end="")
    except OSError:
        pass
    finally:
        stream.close()


@answers("docker stop", r"docker stop (?P<name>[\w.-]+)(?P<forgiving> \|\| true)?")
def docker_stop(shell: Shell, match: re.Match) -> int:
    failure = 0 if match["forgiving"] else None
    status = _docker_ready(shell)
    if status:
        return failure if failure is not None else status
    container = shell.state["containers"].pop(match["name"], None)
    if container is None:
        shell.warn(f"Error response from daemon: No such container: {match['name']}")
        return failure if failure is not None else 1
    from chi_helpers.local import processes

    for process in container["processes"]:
        if process.poll() is None:
            processes.stop_tree(process.pid, timeout=10)
    shell.say(match["name"])
    return 0
