"""`docker compose` for the node's stack, with a line per step and a failure that names its service.

Compose's own progress, in plain mode, is already one line per step ("Container x  Started",
"#5 [2/3] RUN pip install ..."); each is passed on with the elapsed time in front. When `up` or
`build` fails, the services that did not end as they should are named, each with the end of its log.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chi_helpers.progress import Clock

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Compose's logs clear lines even with --no-color
REPO = Path(__file__).resolve().parents[2]
TRACKING_FILE = REPO / "docker" / "compose-tracking.yaml"
DATA_FILE = REPO / "docker" / "compose-data.yaml"
CI_OVERRIDE = REPO / "docker" / "ci" / "compose-ci.yaml"


class ComposeError(RuntimeError):
    """`docker compose` failed; the message names the services and shows the end of their logs."""


@dataclass
class Project:
    """One Compose project: its name, files and env file, as `docker compose -p NAME -f ... --env-file ...`."""

    name: str
    files: list[Path]
    env_file: Path | None = None
    clock: Clock = field(default_factory=Clock)

    def command(self, *arguments: str) -> list[str]:
        command = ["docker", "compose", "--ansi", "never", "--progress", "plain", "-p", self.name]
        if self.env_file:
            command += ["--env-file", str(self.env_file)]
        for file in self.files:
            command += ["-f", str(file)]
        return [*command, *arguments]

    def run(self, *arguments: str, timeout: float = 900, show: bool = True) -> tuple[int, str]:
        """Run a compose command, each output line said with the elapsed time; (exit status, output)."""
        proc = subprocess.Popen(self.command(*arguments), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if show and line.strip():
                    self.clock.say(f"{self.name}: {line.rstrip()}")
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = 124
        return status, "\n".join(lines)

    def capture(self, *arguments: str, timeout: float = 120) -> str:
        done = subprocess.run(self.command(*arguments), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ComposeError(f"docker compose {' '.join(arguments)} failed: {done.stderr.strip()}")
        return done.stdout

    def containers(self) -> list[dict]:
        """`ps -a` as data: one dict per container (Service, State, Health, ExitCode, Publishers ...)."""
        text = self.capture("ps", "-a", "--format", "json").strip()
        if not text:
            return []
        # Compose 2.21+ prints one JSON object per line; older ones a JSON list.
        return json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]

    def failing(self) -> tuple[list[dict], list[str]]:
        """(containers that failed: exited with an error, restarting, unhealthy or dead;
        services never started, waiting on those)."""
        failed, waiting = [], []
        for container in self.containers():
            state, health = container.get("State"), container.get("Health", "")
            if state == "exited" and container.get("ExitCode", 0) != 0 or state in ("restarting", "dead") \
                    or health == "unhealthy":
                failed.append(container)
            elif state == "created" or health == "starting":
                waiting.append(container["Service"])
        return failed, waiting

    def explain(self, what: str, output: str) -> ComposeError:
        parts = [f"docker compose {what} failed for project {self.name}."]
        failed, waiting = self.failing()
        for container in failed:
            service, state = container["Service"], container.get("State")
            detail = container.get("Health") if container.get("Health") == "unhealthy" else f"exit code {_exit_code(container)}"
            log = subprocess.run(self.command("logs", "--no-color", "--no-log-prefix", "--tail", "30", service),
                                 capture_output=True, text=True, timeout=60).stdout
            log = ANSI.sub("", log).rstrip()
            parts.append(f"service {service} is {state} ({detail}); the end of its log:\n{log or '(empty)'}")
        if waiting:
            parts.append(f"not started or not ready yet: {', '.join(waiting)}")
        if not failed:
            parts.append("Compose said:\n" + "\n".join(output.splitlines()[-30:]))
        return ComposeError("\n\n".join(parts))

    def build(self, *build_args: str) -> None:
        """Build every service that has a `build:` section (cached steps cost nothing)."""
        self.clock.say(f"{self.name}: building images ...")
        arguments = [a for value in build_args for a in ("--build-arg", value)]
        status, output = self.run("build", *arguments)
        if status != 0:
            raise self.explain("build", output)
        self.clock.say(f"{self.name}: images built")

    def up(self, timeout: float = 300) -> None:
        """`up -d --wait`: every service running and healthy, the one-shot ones done."""
        self.clock.say(f"{self.name}: up --wait ...")
        status, output = self.run("up", "-d", "--wait", "--wait-timeout", str(int(timeout)), timeout=timeout + 60)
        if status != 0:
            raise self.explain("up", output)
        self.clock.say(f"{self.name}: every service is up")

    def down(self, volumes: bool = False) -> None:
        self.clock.say(f"{self.name}: down{' (and its volumes)' if volumes else ''} ...")
        status, output = self.run("down", "--remove-orphans", *(["--volumes"] if volumes else []), timeout=180)
        if status != 0:
            raise self.explain("down", output)


def build_ci_images(base: str, clock: Clock | None = None) -> None:
    """Build the node's stack images as the container tests run them (the CI override on top), so the
    registries are reached while setting up, and the tests' own build finds every step cached."""
    from chi_helpers import credentials

    with tempfile.TemporaryDirectory(prefix="ci-images-") as scratch:
        env_file = Path(scratch) / "stack.env"  # Compose interpolates the file's `${VAR:?}` even to build
        credentials.write(env_file, "127.0.0.1")
        Project("mlflow-ci-images", [TRACKING_FILE, CI_OVERRIDE], env_file, clock or Clock()).build(f"BASE_IMAGE={base}")


def _exit_code(container: dict) -> str:
    """The last exit code; `ps` says 0 for a container between restarts, `inspect` keeps the real one."""
    done = subprocess.run(["docker", "inspect", "--format", "{{.State.ExitCode}}", container["Name"]],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else str(container.get("ExitCode"))


def port_taken_by(port: int) -> str | None:
    """What listens on the port on any address, as `ss` names it, or None."""
    done = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True)
    return done.stdout.strip() or None
