"""Bring the lab up once per test session (``lab.py up`` is idempotent).

With KUBECRYPT_LAB_TEARDOWN=1 (what ``make test`` sets when it started the
lab itself) the lab is stopped and removed when the session ends.

Modules that need a known starting state (the lab's own tests, the end to end
runs of the playbooks) use ``fresh_lab``: a lab reset for the module, and left
up and storing plaintext afterwards for whatever runs next.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labctl import NODES, REPO, lab_path, reset_lab


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


def lab_stores_plaintext():
    """True when the lab runs and no apiserver is started with an EncryptionConfiguration."""
    script = os.path.join(REPO, "lab", "lab.py")
    status = subprocess.run([sys.executable, script, "status"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            check=False)
    if status.returncode != 0:
        return False
    for node in NODES:
        path = lab_path("nodes", node, "etc", "kubernetes", "manifests", "kube-apiserver.yaml")
        try:
            with open(path) as handle:
                if "--encryption-provider-config" in handle.read():
                    return False
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def plaintext_lab_afterwards(lab):
    """When the module is done, the lab is up and its apiservers store plaintext (reset when they do not)."""
    yield
    if not lab_stores_plaintext():
        reset_lab()


class FreshLab(object):
    """What ``fresh_lab`` yields: ``reset()`` gives the calling test a fresh lab."""

    def __init__(self):
        self._untouched = True

    def reset(self):
        """The module's freshly reset lab on the first call, a lab reset again on every later one."""
        if not self._untouched:
            reset_lab()
        self._untouched = False


@pytest.fixture(scope="module")
def fresh_lab(plaintext_lab_afterwards):
    """A lab reset for this module: plaintext, no EncryptionConfiguration, an empty keystore.

    Tests that each need a fresh lab call ``fresh_lab.reset()`` first.
    """
    reset_lab()
    yield FreshLab()
