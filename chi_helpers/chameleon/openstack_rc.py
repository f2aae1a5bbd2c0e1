"""Credentials for a headless run: the OS_* variables of an OpenStack RC file, put in the environment.

python-chi reads them from there, so no widget or prompt is needed. A password-prompting RC file
(`export OS_PASSWORD=$OS_PASSWORD_INPUT`) only works when OS_PASSWORD is already set; an
application-credential RC file needs nothing else. The application credential must be made with
"Unrestricted" ticked: Blazar makes a Keystone trust with it for every lease, and Keystone refuses
that trust to a restricted one (the dashboard's default), so Blazar answers 500.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

# Where to get a credential that can make leases (the sign-in checks quote it too).
CREDENTIAL_HELP = ("make one on the dashboard of the variant's site (CHI@TACC, or KVM@TACC for the vm: each site has "
                   "its own Keystone): Identity > Application Credentials > Create Application Credential, with "
                   '"Unrestricted" ticked (a restricted one cannot make leases) and the member and reader roles (or '
                   "none selected), then download its openrc file")

# OS_* for OpenStack; CHI_* for python-chi (CHI_RESOURCE_API_URL: where it reads the list of sites).
EXPORT = re.compile(r"^\s*export\s+((?:OS|CHI)_[A-Z0-9_]+)=(.*)$")


def parse(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        match = EXPORT.match(line)
        if match:
            words = shlex.split(match[2], comments=True)
            values[match[1]] = words[0] if words else ""
    return values


def load(path: str | os.PathLike) -> list[str]:
    """Put the file's OS_* variables in this process's environment; returns their names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no OpenStack RC file at {path}: {CREDENTIAL_HELP}")
    values = parse(path.read_text())
    if "OS_AUTH_URL" not in values:
        raise ValueError(f"{path} sets no OS_AUTH_URL: is it an OpenStack RC file?")
    unresolved = [k for k, v in values.items() if v.startswith("$")]
    for key in unresolved:
        if key == "OS_PASSWORD" and os.environ.get("OS_PASSWORD"):
            del values[key]  # the password prompt's answer is already in the environment
        else:
            raise ValueError(f"{path} asks for {key} interactively ({values[key]}); for a headless run use an "
                             f"application-credential RC file ({CREDENTIAL_HELP}), or set OS_PASSWORD in the "
                             "environment first")
    os.environ.update(values)
    return sorted(values)
