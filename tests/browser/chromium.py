"""Debian's Chromium for the browser tests: where it is, and installing it when missing.

Playwright's own browser download is not reachable here, so the tests drive the
system browser (``/usr/bin/chromium``), which ``make test`` installs with apt on
a fresh machine (:func:`ensure_chromium`).
"""

import os
import shutil
import subprocess

CHROMIUM = "/usr/bin/chromium"
# apt-get on a slow mirror, with the package lists refreshed once: generous, it runs once.
INSTALL_TIMEOUT = 900


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when Chromium is installed."""
    if os.access(CHROMIUM, os.X_OK):
        return None
    return f"Chromium is not installed ({CHROMIUM} is missing; apt-get install -y chromium)"


def ensure_chromium() -> str | None:
    """Install Debian's ``chromium`` with apt when it is missing.

    Runs ``apt-get install -y chromium``, and once more after ``apt-get
    update`` when the first attempt fails (a fresh machine has no package
    lists). Its output goes to the terminal.

    Returns:
        None when Chromium is there (now), else why it could not be installed.
    """
    if missing_reason() is None:
        return None
    apt = shutil.which("apt-get")
    if apt is None:
        return missing_reason() + "; this machine has no apt-get to install it"
    if os.geteuid() != 0:
        return missing_reason() + "; installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "chromium"]
    print("browser tests: installing Debian's chromium (apt-get install -y chromium)", flush=True)
    try:
        if subprocess.call(install, env=env, timeout=INSTALL_TIMEOUT) != 0:
            subprocess.call([apt, "update", "-q"], env=env, timeout=INSTALL_TIMEOUT)
            subprocess.call(install, env=env, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return missing_reason() + f"; apt-get did not finish within {INSTALL_TIMEOUT} s"
    reason = missing_reason()
    return None if reason is None else reason + "; apt-get could not install it"
