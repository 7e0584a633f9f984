"""Offline stand-in for the get-pip.py script ansible-test downloads.

ansible-test creates each sanity venv without pip and fetches a pip bootstrap
script from a host outside the package registries this project may reach.
This script does the same job from what is at hand: it installs the pip wheel
bundled with the interpreter (ensurepip), then installs the pip version
ansible-test asked for from PyPI.  The Makefile places it in ansible-test's
cache under the name ansible-test looks for.
"""

from __future__ import annotations

import subprocess
import sys

# get-pip.py options that pip install does not know.
_GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def main():
    # In a child process: ensurepip points PIP_CONFIG_FILE at os.devnull in the
    # process that calls it, which would hide the machine's pip configuration
    # (index, certificates) from the install below.
    bootstrap = subprocess.call([sys.executable, "-m", "ensurepip", "--upgrade"])
    if bootstrap != 0:
        return bootstrap
    arguments = [argument for argument in sys.argv[1:] if argument not in _GET_PIP_ONLY]
    return subprocess.call([sys.executable, "-m", "pip", "install"] + arguments)


if __name__ == "__main__":
    sys.exit(main())
