"""Bring the lab up once per test session (``lab.py up`` is idempotent).

With KUBECRYPT_LAB_TEARDOWN=1 (what ``make test`` sets when it started the
lab itself) the lab is stopped and removed when the session ends.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labctl import REPO


@pytest.fixture(scope="session")
def lab():
    script = os.path.join(REPO, "lab", "lab.py")
    result = subprocess.run([sys.executable, script, "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, check=False)
    if result.returncode != 0:
        pytest.fail("the lab did not come up:\n" + result.stdout)
    yield
    if os.environ.get("KUBECRYPT_LAB_TEARDOWN") == "1":
        subprocess.run([sys.executable, script, "down"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
