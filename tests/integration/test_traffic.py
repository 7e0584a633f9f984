"""A key rotation under continuous traffic through the load balancer (issue 5).

While the rotate playbook runs -- in restart mode (a rolling restart of every
apiserver in each of three phases) and in automatic-reload mode -- the load
generator (traffic.py) creates, updates and reads Secrets through the lab's
load balancer, one request per connection.  The rotation must be invisible to
it except as retryable errors (no answer, 429/503): zero reads of an existing
Secret answered with an error, zero reads that return anything but the last
acknowledged value, zero acknowledged writes lost, and at the end every Secret
the traffic wrote holds its last acknowledged value on every apiserver and is
stored under the new key.

    .venv/bin/python -m pytest -p no:cacheprovider tests/integration/test_traffic.py -v -s
"""

from __future__ import annotations

import json
import os
import time

import pytest

import labcheck
from labctl import NODES, lab_path, run_playbook
from test_resume import EXTRA_VARS, enable_once, node_keys, stray_manifests
from traffic import Traffic

pytestmark = pytest.mark.usefixtures("lab")

NAMESPACE = "kc-traffic"
WARM_UP = 5.0
COOL_DOWN = 5.0
MODES = [("restart", False), ("reload", True)]


def _write_key():
    """The key every node writes (the first of its secrets group), or None when they differ."""
    writes = {(node_keys(node) or [(None, None, None)])[0][1] for node in NODES}
    return writes.pop() if len(writes) == 1 else None


@pytest.mark.parametrize("mode,automatic_reload", MODES, ids=[mode for mode, _reload in MODES])
def test_rotate_under_traffic(mode, automatic_reload):
    logs = lab_path("test-logs", "traffic")
    os.makedirs(logs, exist_ok=True)
    enable_once(logs)
    old = _write_key()
    traffic = Traffic(NAMESPACE, workers=4, pool_size=200)
    traffic.prepare()
    traffic.start()
    try:
        time.sleep(WARM_UP)
        started = time.monotonic()
        result = run_playbook("kubecrypt.at_rest.rotate",
                              extra_vars=dict(EXTRA_VARS, kubecrypt_automatic_reload=automatic_reload))
        rotation_seconds = time.monotonic() - started
        time.sleep(COOL_DOWN)
    finally:
        traffic.stop()
    log_path = os.path.join(logs, "rotate-%s.log" % mode)
    with open(log_path, "w") as handle:
        handle.write(result.stdout)
    report = traffic.report()
    report["verify"] = traffic.verify()
    report["rotation_seconds"] = round(rotation_seconds, 1)
    print("\nrotation (%s mode) under traffic: %s" % (mode, json.dumps(report, indent=1, sort_keys=True)))
    assert result.returncode == 0, "rotate failed under traffic (rc %s); see %s" % (result.returncode, log_path)

    counts = report["counts"]
    failed = {operation: counter.get("failed", 0) for operation, counter in counts.items()}
    assert not any(failed.values()), "requests failed during the rotation: %s; %s" % (failed, report["failures"])
    assert report["verify"]["lost"] == 0, "acknowledged writes were lost: %s" % report["verify"]["lost_sample"]
    assert counts["read_existing"].get("ok", 0) > 0 and counts["update"].get("ok", 0) > 0, counts

    new = _write_key()
    assert new and new != old, "the nodes write %s, not a new key" % new
    for node in NODES:
        assert [name for _kind, name, _fp in node_keys(node)] == [new], "%s still holds other keys" % node
    check = labcheck.check("secretbox:" + new, NAMESPACE)
    assert check["ok"], json.dumps(check, sort_keys=True)
    assert not any(stray_manifests().values()), stray_manifests()
