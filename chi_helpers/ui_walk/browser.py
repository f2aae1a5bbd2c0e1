"""Debian's Chromium, driven headless by Playwright.

Playwright's own browser builds come from a host this machine cannot reach, so the walk drives the
system's `chromium` package instead (installed with apt, as root, when missing, as the Docker engine
is). Root needs `--no-sandbox`. Every request to a host outside 127.0.0.0/8 is aborted inside the
browser, before it leaves: the MLflow UI links to mlflow.org and would fetch from it.

A student opens the node at its public address, not at localhost, and the servers there judge a request
by its Host and Origin (MLflow's CORS check, Jupyter's origin and XSRF checks). So a test can give
Chromium names of its own (`hosts`, under `.test`, which no DNS answers: RFC 6761): its resolver maps
each onto a loopback address and every other name onto nothing, so no lookup leaves the machine either.
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


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(url: str, hosts: dict[str, str] | None = None) -> bool:
    """Whether `url` stays on this machine: a loopback address, localhost, or a name of `hosts` (which
    the browser's resolver maps onto loopback)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "file"):  # nothing leaves the machine
        return True
    host = parts.hostname or ""
    return host == "localhost" or host in (hosts or {}) or _is_loopback_address(host)


def resolver_rules(hosts: dict[str, str]) -> str:
    """Chromium's `--host-resolver-rules`: each name onto its loopback address, every other name onto
    nothing (`~NOTFOUND`), loopback addresses as they are (the rules apply to IP literals too); the
    first matching rule wins, so the names come first."""
    for name, address in hosts.items():
        if not name.endswith(".test") or not _is_loopback_address(address):
            raise ValueError(f"{name} -> {address}: a test's name ends in .test and maps onto a loopback address")
    return ", ".join([*(f"MAP {name} {address}" for name, address in hosts.items()), "MAP * ~NOTFOUND",
                      "EXCLUDE localhost", "EXCLUDE 127.*", "EXCLUDE [::1]"])


@contextmanager
def chromium(binary: str | None = None, hosts: dict[str, str] | None = None):
    """A headless Chromium browser (Playwright's `Browser`), closed on exit. `hosts`: names the browser
    resolves onto loopback addresses ({"node.test": "127.0.0.1"}), as a student's resolves the node's."""
    from playwright.sync_api import Error, sync_playwright

    binary = binary or installed()
    if not binary:
        raise BrowserError(f"Chromium is not installed (`apt-get install {PACKAGE}` as root)")
    args = ["--no-sandbox", *([f"--host-resolver-rules={resolver_rules(hosts)}"] if hosts else [])]
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=binary, args=args, headless=True)
        except Error as failed:
            raise BrowserError(f"{binary} does not start: {str(failed).splitlines()[0]}") from failed
        browser.test_hosts = dict(hosts or {})  # what guarded_context lets through besides loopback
        try:
            yield browser
        finally:
            browser.close()


def guarded_context(browser, refused: list[str] | None = None, **options):
    """A browser context whose requests outside 127.0.0.0/8 (and the browser's own names onto it) are
    aborted, and listed in `refused`."""
    context = browser.new_context(**options)
    hosts = getattr(browser, "test_hosts", {})

    def route(handled):
        url = handled.request.url
        if is_loopback(url, hosts):
            handled.continue_()
        else:
            if refused is not None:
                refused.append(url)
            handled.abort("blockedbyclient")

    context.route("**/*", route)
    return context
