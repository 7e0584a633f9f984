"""kms_provider: health and Status key IDs of one apiserver, from recorded answers.

The recorded texts are what kube-apiserver v1.37.2 answered in the lab with
the lab's KMS v2 plugin (its socket removed, and after a KEK rotation).
"""

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import kms_provider
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import ApiError
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.kms_provider import (
    FreshStatus,
    KmsInfoError,
    Observation,
    parse_health,
    parse_status_metrics,
    run_module,
)

APISERVER = "sha256:ef77ded7eb38c2c6da2925791e86fcc28a26400cb99e1348e8f70c58da694944"
KEK1 = "sha256:" + hashlib.sha256(b"kek-1").hexdigest()
KEK2 = "sha256:" + hashlib.sha256(b"kek-2").hexdigest()
METRIC = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
DOWN = ('internal server error: kms-provider-0: rpc error: code = Canceled desc = latest balancer error: '
        'connection error: desc = "transport: Error while dialing: dial unix /run/kms/kms.sock: connect: no such '
        'file or directory"\n')


def status_line(key_id_hash, timestamp, provider="lab-kms"):
    return '%s{apiserver_id_hash="%s",key_id_hash="%s",provider_name="%s"} %r' % (
        METRIC, APISERVER, key_id_hash, provider, timestamp)


def metrics(*lines):
    return "\n".join(["# HELP %s [ALPHA] ..." % METRIC, "# TYPE %s gauge" % METRIC] + list(lines))


def test_the_newest_status_names_the_current_key_id():
    text = metrics(status_line(KEK2, 1.7953923428340585e+09), status_line(KEK1, 1.7953923225832217e+09),
                   status_line(KEK1, 1.79e+09, provider="other"))
    assert parse_status_metrics(text) == {
        "lab-kms": {"key_id_hash": KEK2, "status_timestamp": 1795392342.8340585, "apiserver_id_hash": APISERVER},
        "other": {"key_id_hash": KEK1, "status_timestamp": 1.79e+09, "apiserver_id_hash": APISERVER},
    }


def test_other_metrics_and_junk_are_ignored():
    text = "\n".join([
        'apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{key_id_hash="%s",provider_name="x",'
        'transformation_type="to_storage"} 1' % KEK1,
        "%s{provider_name=\"x\"} 1" % METRIC,
        "%s{key_id_hash=\"%s\",provider_name=\"x\"} not-a-number" % (METRIC, KEK1),
        "garbage",
    ])
    assert parse_status_metrics(text) == {}


@pytest.mark.parametrize("answer, expected", [
    ((200, "ok"), (True, True, "ok")),
    ((404, "404 page not found\n"), (False, False, "no KMS provider is configured")),
    ((500, DOWN), (True, False, "HTTP 500: " + " ".join(DOWN[len("internal server error: "):].split()))),
])
def test_health(answer, expected):
    assert parse_health(*answer) == expected


def test_health_detail_is_bounded():
    configured, healthy, detail = parse_health(500, "x" * 5000)
    assert len(detail) == 400 and detail.endswith("...")


# ---------------------------------------------------------------------------
# Waiting for a fresh Status


def observation(timestamp=None, healthy=True, key_id_hash=KEK2):
    providers = {"lab-kms": {"key_id_hash": key_id_hash, "status_timestamp": timestamp}} if timestamp else {}
    return Observation(reachable=True, configured=True, healthy=healthy, health="ok" if healthy else "HTTP 500",
                       providers=providers)


def test_fresh_status_needs_a_newer_call_than_the_first_answer():
    fresh = FreshStatus(["lab-kms"])
    assert fresh.waiting_for(observation(100.0, key_id_hash=KEK1))
    assert fresh.waiting_for(observation(100.0, key_id_hash=KEK1))
    assert fresh.waiting_for(observation(120.0)) == []


def test_fresh_status_takes_its_baseline_when_the_apiserver_first_answers():
    fresh = FreshStatus(["lab-kms"])
    assert "the apiserver to answer" in fresh.waiting_for(Observation(reachable=False, error="refused"))[0]
    assert fresh.waiting_for(observation(100.0))
    assert fresh.waiting_for(observation(101.0)) == []


def test_fresh_status_without_any_status_yet_takes_the_first_one():
    fresh = FreshStatus(["lab-kms"])
    assert fresh.waiting_for(observation(None))
    assert fresh.waiting_for(observation(5.0)) == []


def test_fresh_status_needs_a_passing_check():
    fresh = FreshStatus(["lab-kms"])
    fresh.waiting_for(observation(100.0))
    waiting = fresh.waiting_for(observation(120.0, healthy=False))
    assert waiting == ["/readyz/kms-providers to be ok (HTTP 500)"]


def test_fresh_status_needs_provider_names():
    with pytest.raises(KmsInfoError, match="needs the names"):
        FreshStatus([])


# ---------------------------------------------------------------------------
# The module's work against a recorded apiserver


class FakeClock(object):
    def __init__(self):
        self.time = 0.0

    def now(self):
        return self.time

    def sleep(self, seconds):
        self.time += seconds


class RecordedApiserver(object):
    """Answers /readyz/kms-providers and /metrics from a list of (health, metrics) pairs, one per poll."""

    server = "https://10.0.0.11:6443"

    def __init__(self, answers):
        self.answers = list(answers)
        self.paths = []
        self.closed = False

    def get_raw(self, path, query=None, line_filter=None):
        self.paths.append(path)
        if path == "/readyz/kms-providers":
            self.current = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if self.current is None:
                raise ApiError(None, "ConnectionError", path, "GET", "connection refused")
            return self.current[0]
        text = self.current[1][1]
        if line_filter:
            text = "\n".join(line for line in text.splitlines() if line_filter(line))
        return self.current[1][0], text

    def close(self):
        self.closed = True


def run(answers, clock=None, **params):
    apiserver = RecordedApiserver(answers)
    params.setdefault("wait_timeout", 60)
    params.setdefault("wait_sleep", 2)
    result, failure = run_module(params, lambda params, timeout: apiserver, clock or FakeClock())
    assert apiserver.closed
    return result, failure, apiserver


def test_a_plugin_that_is_down():
    result, failure, dummy = run([((500, DOWN), (200, metrics(status_line(KEK1, 100.0))))])
    assert failure is None
    assert result["reachable"] and result["kms_configured"] and not result["healthy"]
    assert "no such file or directory" in result["health"]
    assert result["providers"]["lab-kms"]["key_id_hash"] == KEK1


def test_an_apiserver_that_does_not_answer_is_reported_not_failed():
    result, failure, dummy = run([None])
    assert failure is None and not result["reachable"] and "connection refused" in result["health"]


def test_waits_for_a_fresh_status_and_reports_the_new_key_id():
    old = ((200, "ok"), (200, metrics(status_line(KEK1, 100.0))))
    new = ((200, "ok"), (200, metrics(status_line(KEK1, 100.0), status_line(KEK2, 118.0))))
    clock = FakeClock()
    result, failure, apiserver = run([old, old, old, new], clock, providers=["lab-kms"], fresh_status=True)
    assert failure is None
    assert result["providers"] == {"lab-kms": {"key_id_hash": KEK2, "status_timestamp": 118.0,
                                               "apiserver_id_hash": APISERVER}}
    assert clock.time == 6.0
    # every poll asks the health check first: that is what makes the apiserver call Status
    assert apiserver.paths[::2] == ["/readyz/kms-providers"] * 4


def test_fails_with_what_it_saw_when_no_fresh_status_comes():
    old = ((200, "ok"), (200, metrics(status_line(KEK1, 100.0))))
    result, failure, dummy = run([old], providers=["lab-kms"], fresh_status=True, wait_timeout=10)
    assert "no fresh KMS Status within 10s" in failure
    assert "a Status call to KMS provider lab-kms after 100.00" in failure
    assert KEK1 in failure


def test_only_the_named_providers_are_returned():
    text = metrics(status_line(KEK1, 1.0), status_line(KEK2, 2.0, provider="other"))
    result, failure, dummy = run([((200, "ok"), (200, text))], providers=["other", "missing"])
    assert list(result["providers"]) == ["other"]


def test_refused_credentials_fail():
    apiserver = RecordedApiserver([((403, "forbidden"), (200, ""))])
    with pytest.raises(KmsInfoError, match="not accepted"):
        run_module({"wait_timeout": 0}, lambda params, timeout: apiserver, FakeClock())


def test_the_module_is_registered_in_the_k8s_action_group():
    import os
    import yaml
    runtime = os.path.join(os.path.dirname(kms_provider.__file__), "..", "..", "meta", "runtime.yml")
    with open(runtime) as handle:
        assert "kms_provider_info" in yaml.safe_load(handle)["action_groups"]["k8s"]
