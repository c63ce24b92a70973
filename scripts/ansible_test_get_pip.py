"""Offline stand-in for the get-pip.py that ansible-test downloads from ci-files.testing.ansible.com.

ansible-test creates its sanity virtualenvs without pip and bootstraps pip by running
``python get_pip_<X_Y>.py pip==X.Y [--no-setuptools] [--no-wheel] [pip options]`` with the script
taken from ``~/.ansible/test/cache/``; that host is not reachable here, PyPI is.  scripts/sanity.sh
copies this file into that cache: it installs the interpreter's bundled pip with ``ensurepip`` and
then lets that pip install the exact requested packages (``pip==X.Y``) from PyPI.
"""

from __future__ import annotations

import subprocess
import sys


def main() -> int:
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    boot = subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if boot.returncode != 0:
        sys.stderr.write(boot.stdout)
        return boot.returncode
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--force-reinstall"] + args
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
