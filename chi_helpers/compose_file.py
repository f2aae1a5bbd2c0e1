"""The node's Compose file as data: the MLflow server's command line, with the env file's values filled in.

Processes that stand in for the node's stack (`stack up --public-address`, the twin's node, the browser
tests) start MLflow with the flags the Compose file gives it, not flags of their own, so what a browser
meets there is what it meets on the node. Values are filled in as Compose does it
(compose-spec `interpolation.md`): `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
`${VAR?message}` and `$$` for a dollar sign.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRACKING_FILE = REPO / "docker" / "compose-tracking.yaml"
MLFLOW_SERVICE = "mlflow"
# What the stand-ins choose themselves: where to listen (they bind a loopback address, not 0.0.0.0).
LISTEN_FLAGS = ("--host", "--port")

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")


class ComposeFileError(ValueError):
    """A required variable has no value, or the file lacks what is asked of it."""


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """`text` with Compose's variables replaced from `values`; a required one without a value raises,
    with Compose's own wording."""

    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = values.get(name)
        unset_or_empty = value is None or (value == "" and op and op.startswith(":"))
        if op in (":?", "?") and unset_or_empty:
            raise ComposeFileError(f"required variable {name} is missing a value: {arg}")
        if op in (":-", "-") and unset_or_empty:
            return arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def load(path: Path = TRACKING_FILE) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


def mlflow_server_flags(values: Mapping[str, str], path: Path = TRACKING_FILE, keep_listen: bool = False) -> list[str]:
    """The options the Compose file gives `mlflow server`, one `--name=value` word each, with `values`
    filled in. `--host` and `--port` are left out unless `keep_listen`: a stand-in listens where it can."""
    service = (load(path).get("services") or {}).get(MLFLOW_SERVICE) or {}
    command = service.get("command")
    if not isinstance(command, list) or command[:2] != ["mlflow", "server"]:
        raise ComposeFileError(f"{path}: service {MLFLOW_SERVICE!r} does not run `mlflow server` as a list of words")
    flags = [interpolate(str(word), values) for word in command[2:]]
    return [flag for flag in flags if keep_listen or flag.split("=", 1)[0] not in LISTEN_FLAGS]


def flag_value(flags: list[str], name: str) -> str | None:
    """The value of `--name=value` in `flags`, or None."""
    for flag in flags:
        key, _, value = flag.partition("=")
        if key == name:
            return value
    return None
