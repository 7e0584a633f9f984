"""``molecule test -s enable``: the lab as the platform (destroy, create, converge, idempotence, verify, destroy).

The scenario runs in restart mode here (KUBECRYPT_AUTOMATIC_RELOAD=false): it
is minutes faster than waiting for automatic reload, which test_enable covers.
Its destroy removes the lab; ``plaintext_lab_afterwards`` brings up a fresh
one for the modules that come next.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from labctl import REPO, ansible_env

pytestmark = pytest.mark.usefixtures("plaintext_lab_afterwards")

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_molecule_scenario_enable_passes(tmp_path):
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
    result = subprocess.run([molecule, "test", "-s", "enable"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=3600, check=False)
    seconds = time.monotonic() - started
    output = ANSI.sub("", result.stdout)
    rc = result.returncode
    del result
    tail = "\n".join(output.splitlines()[-80:])
    print("\nmolecule test -s enable: rc %d in %.0fs" % (rc, seconds))
    assert rc == 0, "molecule test -s enable failed (rc %d, %.0fs):\n%s" % (rc, seconds, tail)
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(r"enable \S+ %s: Executed: Successful" % step, output), \
            "molecule did not report the %s step as successful:\n%s" % (step, tail)
    assert "Idempotence test failed" not in output, tail
