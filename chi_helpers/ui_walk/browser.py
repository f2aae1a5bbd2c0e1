"""Debian's Chromium, driven headless by Playwright.

Playwright's own browser builds come from a host this machine cannot reach, so the walk drives the
system's `chromium` package instead (installed with apt, as root, when missing, as the Docker engine
is). Root needs `--no-sandbox`. Every request to a host outside 127.0.0.0/8 is aborted inside the
browser, before it leaves: the MLflow UI links to mlflow.org and would fetch from it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from contextlib import contextmanager
from urllib.parse import urlsplit

from chi_helpers.progress import Clock

CHROMIUM = "/usr/bin/chromium"
PACKAGE = "chromium"  # Debian's; chromium-driver is only for Selenium


class BrowserError(RuntimeError):
    """Chromium is missing and cannot be installed here, or does not start."""


def installed() -> str | None:
    """The Chromium binary, if one is installed."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


def install(clock: Clock | None = None) -> str:
    """Chromium's path, installing Debian's package first when it is missing (needs apt-get and root)."""
    clock = clock or Clock()
    found = installed()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrowserError(f"Chromium is not installed. On Debian or Ubuntu: `sudo apt-get install {PACKAGE}`; "
                           "elsewhere install Chromium and put it on PATH as `chromium`.")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", PACKAGE]):
        clock.say(f"{' '.join(command)} ...")
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise BrowserError(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-2000:]}")
    clock.say(f"installed {version(CHROMIUM)}")
    return CHROMIUM


def version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    return (done.stdout or done.stderr).strip()


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "file"):  # nothing leaves the machine
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def chromium(binary: str | None = None):
    """A headless Chromium browser (Playwright's `Browser`), closed on exit."""
    from playwright.sync_api import Error, sync_playwright

    binary = binary or installed()
    if not binary:
        raise BrowserError(f"Chromium is not installed (`apt-get install {PACKAGE}` as root)")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox"], headless=True)
        except Error as failed:
            raise BrowserError(f"{binary} does not start: {str(failed).splitlines()[0]}") from failed
        try:
            yield browser
        finally:
            browser.close()


def guarded_context(browser, refused: list[str] | None = None, **options):
    """A browser context whose requests outside 127.0.0.0/8 are aborted (and listed in `refused`)."""
    context = browser.new_context(**options)

    def route(handled):
        url = handled.request.url
        if is_loopback(url):
            handled.continue_()
        else:
            if refused is not None:
                refused.append(url)
            handled.abort("blockedbyclient")

    context.route("**/*", route)
    return context
