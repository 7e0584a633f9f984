"""``molecule test -s kms``: plaintext to KMS v2 on the lab (destroy, create, converge, idempotence, verify, destroy).

Restart mode (KUBECRYPT_AUTOMATIC_RELOAD=false), the fast one.  The scenario's
destroy removes the lab; a fresh one, storing plaintext, is brought up
afterwards for the modules that come next.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from labctl import REPO, ansible_env, reset_lab

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def lab_afterwards(lab):
    yield
    reset_lab()


def test_molecule_scenario_kms_passes(tmp_path, lab_afterwards):
    env = ansible_env()
    env.update({
        "KUBECRYPT_AUTOMATIC_RELOAD": "false",
        # Molecule's state for this run only, not shared with another checkout's or engineer's run.
        "MOLECULE_EPHEMERAL_DIRECTORY": str(tmp_path / "molecule"),
        "NO_COLOR": "1",
        "PY_COLORS": "0",
    })
    molecule = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "molecule")
    started = time.monotonic()
    result = subprocess.run([molecule, "test", "-s", "kms"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=3600, check=False)
    seconds = time.monotonic() - started
    output = ANSI.sub("", result.stdout)
    tail = "\n".join(output.splitlines()[-80:])
    print("\nmolecule test -s kms: rc %d in %.0fs" % (result.returncode, seconds))
    assert result.returncode == 0, "molecule test -s kms failed (rc %d, %.0fs):\n%s" % (
        result.returncode, seconds, tail)
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(r"kms \S+ %s: Executed: Successful" % step, output), \
            "molecule did not report the %s step as successful:\n%s" % (step, tail)
    assert "Idempotence test failed" not in output, tail
