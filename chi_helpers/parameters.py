"""Checks on a notebook's parameters, run in its first cells so a bad value fails before any work.

Every message names the parameter and says what to set it to.
"""

from __future__ import annotations

import getpass
import os
import re

from chi_helpers.variants import TARGETS, Variant, get_variant

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ParameterError(ValueError):
    """A notebook parameter has a value the series cannot use."""


def default_user() -> str:
    """The name that makes this student's resources theirs (their netID on Chameleon's JupyterHub)."""
    # Chameleon's JupyterHub names the student in NB_USER; its container's USER is the image's "jovyan".
    hub_user = os.environ.get("NB_USER", "")
    if hub_user and hub_user != "jovyan":
        return hub_user
    return os.environ.get("USER") or getpass.getuser()


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ParameterError(
            f"unknown target {target!r}: set target to 'local' (this machine, no cloud) "
            "or 'chameleon' (a reserved node) in the parameters cell"
        )
    return target


def check_variant(variant: str) -> Variant:
    try:
        return get_variant(variant)
    except ValueError as error:
        raise ParameterError(str(error)) from None


def check_name(what: str, value: str | None, example: str) -> str:
    if value is None or not str(value).strip():
        raise ParameterError(f"{what} is empty: set it in the parameters cell, e.g. {what} = {example!r}")
    if not NAME.match(value):
        raise ParameterError(
            f"{what} {value!r} may hold only letters, digits, '_', '-' and '.', starting with a letter "
            f"or digit: e.g. {what} = {example!r}"
        )
    return value


def check(variant: str, target: str = "chameleon", **names: str | None) -> Variant:
    """Check the variant, the target and any named resources (lease_name, node_name, user ...)."""
    check_target(target)
    profile = check_variant(variant)
    examples = {
        "lease_name": "mlflow_abc123", "user": "abc123",
        "node_name": profile.default_node or f"the name of a {profile.node_type} host",
    }
    for what, value in names.items():
        check_name(what, value, examples.get(what, "name"))
    return profile
