"""The release command's checks that need no cloud. (Releasing itself is tested against the twin:
tests/twin/test_server_and_release.py.)"""

from __future__ import annotations


def test_cli_refuses_an_empty_lease_name_before_any_call():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "chi_helpers", "release", "--lease-name", "", "--user", "abc123"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "lease_name is empty" in done.stderr
