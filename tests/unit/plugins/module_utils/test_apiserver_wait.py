"""Unit tests of module_utils/apiserver_wait.py: the pure predicates and the wait loop.

The /metrics, /readyz and /version answers below were recorded from a real
kube-apiserver v1.37.2 (tests/integration/standalone_k8s.py), started with a
secretbox EncryptionConfiguration and --encryption-provider-config-automatic-reload,
then given a second config (reloaded), then an invalid one (rejected).  /metrics is
trimmed to the samples the module reads plus a few neighbours; long lines are
joined from parts only to keep this file's lines short.
"""

from __future__ import annotations

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import apiserver_wait as aw
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import ApiError

CONFIG1_SHA256 = "92c32361b6dedf0750102fc1ffe3303bd6efc067e8a5291fdfdd47e27a0572f5"
CONFIG2_SHA256 = "da4c9c7a1667dcfe970e376cf159fd30be70af3372bcbd06ac6ed4179ce5664e"
START_TIME = 1795389630.31
_ID = 'apiserver_id_hash="sha256:73095bbbe8f317654631b5a70d7c53951e472e19c3daa5b71a50958a5e82991b"'
_INFO = "apiserver_encryption_config_controller_last_config_info"
_RELOADS = "apiserver_encryption_config_controller_automatic_reloads_total"
_RELOAD_TS = "apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds"


def _lines(*lines):
    return "\n".join(lines) + "\n"


_COMMON = (
    "# HELP apiserver_envelope_encryption_dek_cache_fill_percent [ALPHA] Percent of the cache slots currently "
    "occupied by cached DEKs.",
    "# TYPE apiserver_envelope_encryption_dek_cache_fill_percent gauge",
    "apiserver_envelope_encryption_dek_cache_fill_percent 0",
    "# HELP go_goroutines Number of goroutines that currently exist.",
    "# TYPE go_goroutines gauge",
    "go_goroutines 2757",
    "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
    "# TYPE process_start_time_seconds gauge",
    "process_start_time_seconds 1.79538963031e+09",
)
_INFO_HEAD = (
    "# HELP %s [ALPHA] Information about the last applied encryption configuration with hash as label, split by "
    "apiserver identity." % _INFO,
    "# TYPE %s gauge" % _INFO,
)
_RELOAD_HEAD = (
    "# HELP %s [ALPHA] Timestamp of the last successful or failed automatic reload of encryption configuration "
    "split by apiserver identity." % _RELOAD_TS,
    "# TYPE %s gauge" % _RELOAD_TS,
)
_RELOADS_HEAD = (
    "# HELP %s [ALPHA] Total number of reload successes and failures of encryption configuration split by "
    "apiserver identity." % _RELOADS,
    "# TYPE %s counter" % _RELOADS,
)

# A fresh start with config 1: the hash is there at start-up, before any reload.
METRICS_STARTED = _lines(*(_INFO_HEAD + ('%s{%s,hash="sha256:%s"} 1' % (_INFO, _ID, CONFIG1_SHA256),) + _COMMON))
# After the automatic reload of config 2: one series, the new hash.
METRICS_RELOADED = _lines(*(
    _RELOAD_HEAD + ('%s{%s,status="success"} 1.7953896926773422e+09' % (_RELOAD_TS, _ID),)
    + _RELOADS_HEAD + ('%s{%s,status="success"} 1' % (_RELOADS, _ID),)
    + _INFO_HEAD + ('%s{%s,hash="sha256:%s"} 1' % (_INFO, _ID, CONFIG2_SHA256),) + _COMMON))
# After writing a config the apiserver rejects (a 7-byte secretbox key): the old hash stays.
METRICS_RELOAD_FAILED = _lines(*(
    _RELOAD_HEAD + ('%s{%s,status="failure"} 1.795389753960176e+09' % (_RELOAD_TS, _ID),
                    '%s{%s,status="success"} 1.7953896926773422e+09' % (_RELOAD_TS, _ID))
    + _RELOADS_HEAD + ('%s{%s,status="failure"} 9' % (_RELOADS, _ID), '%s{%s,status="success"} 1' % (_RELOADS, _ID))
    + _INFO_HEAD + ('%s{%s,hash="sha256:%s"} 1' % (_INFO, _ID, CONFIG2_SHA256),) + _COMMON))
# An apiserver without --encryption-provider-config (the lab's).
METRICS_NO_ENCRYPTION = _lines(*_COMMON[:-1] + ("process_start_time_seconds 1.79538863588e+09",))

_CHECKS_BEFORE = ["ping", "log", "etcd", "etcd-readiness", "kms-providers", "informer-sync",
                  "poststarthook/start-encryption-provider-config-automatic-reload",
                  "poststarthook/start-apiserver-admission-initializer", "poststarthook/storage-readiness"]
_CHECKS_AFTER = ["poststarthook/bootstrap-controller", "poststarthook/apiservice-openapiv3-controller", "shutdown"]
# /readyz while starting: HTTP 500, and the plain path lists the checks when it fails.
READYZ_STARTING = (500, _lines(*(["[+]%s ok" % c for c in _CHECKS_BEFORE]
                                 + ["[-]poststarthook/rbac/bootstrap-roles failed: reason withheld"]
                                 + ["[+]%s ok" % c for c in _CHECKS_AFTER] + ["readyz check failed"])))
READYZ_OK = (200, "ok")
READYZ_OK_VERBOSE = (200, _lines(*(["[+]%s ok" % c for c in _CHECKS_BEFORE + _CHECKS_AFTER]
                                   + ["readyz check passed"])))
VERSION = {"major": "1", "minor": "37", "emulationMajor": "1", "emulationMinor": "37", "gitVersion": "v1.37.2",
           "goVersion": "go1.26.8", "platform": "linux/amd64"}
VERSION_OLD = {"major": "1", "minor": "33+", "gitVersion": "v1.33.4-eks-1"}


# ---------------------------------------------------------------------------
# Parsing


def test_parse_metrics_at_startup():
    parsed = aw.parse_metrics(METRICS_STARTED)
    assert parsed["process_start_time"] == pytest.approx(START_TIME)
    assert parsed["config_hashes"] == ["sha256:" + CONFIG1_SHA256]
    assert parsed["reload_successes"] == 0 and parsed["reload_failures"] == 0


def test_parse_metrics_after_reload_and_failure():
    reloaded = aw.parse_metrics(METRICS_RELOADED)
    assert reloaded["config_hashes"] == ["sha256:" + CONFIG2_SHA256]
    assert reloaded["reload_successes"] == 1
    failed = aw.parse_metrics(METRICS_RELOAD_FAILED)
    assert failed["config_hashes"] == ["sha256:" + CONFIG2_SHA256]
    assert failed["reload_failures"] == 9
    assert failed["last_reload_failure"] == pytest.approx(1795389753.960176)
    assert failed["last_reload_success"] == pytest.approx(1795389692.6773422)


def test_parse_metrics_without_encryption():
    parsed = aw.parse_metrics(METRICS_NO_ENCRYPTION)
    assert parsed["config_hashes"] == []
    assert parsed["process_start_time"] == pytest.approx(1795388635.88)


def test_parse_metrics_ignores_garbage_and_escapes_labels():
    text = _lines("garbage line", "metric_without_value", 'x{a="b\\"c"} NaN_not', "%s 12" % aw.START_TIME_METRIC,
                  '%s{hash="sha256:ab",other="q\\"x"} 1' % _INFO, '%s{hash="sha256:zz"} 0' % _INFO)
    parsed = aw.parse_metrics(text)
    assert parsed["process_start_time"] == 12.0
    assert parsed["config_hashes"] == ["sha256:ab"]


def test_metrics_line_filter_keeps_only_what_is_read():
    kept = [line for line in METRICS_RELOAD_FAILED.splitlines() if aw.metrics_line_filter(line)]
    assert kept and all(not line.startswith("#") for line in kept)
    assert not any(line.startswith("go_") for line in kept)
    assert aw.parse_metrics("\n".join(kept)) == aw.parse_metrics(METRICS_RELOAD_FAILED)


def test_parse_readyz():
    assert aw.parse_readyz(*READYZ_OK) == (True, "ok")
    ready, detail = aw.parse_readyz(*READYZ_STARTING)
    assert not ready
    assert detail == "HTTP 500: [-]poststarthook/rbac/bootstrap-roles failed: reason withheld"
    # The verbose answer of a ready server is not the plain "ok" but still a pass for the caller that asks it.
    assert aw.parse_readyz(*READYZ_OK_VERBOSE)[0] is False
    assert aw.parse_readyz(503, "x" * 1000)[1].endswith("...")


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), (CONFIG1_SHA256, CONFIG1_SHA256), ("sha256:" + CONFIG1_SHA256.upper(), CONFIG1_SHA256),
])
def test_normalize_config_sha256(value, expected):
    assert aw.normalize_config_sha256(value) == expected


@pytest.mark.parametrize("value", ["abc", "sha256:" + "g" * 64, CONFIG1_SHA256 + "0"])
def test_normalize_config_sha256_refuses(value):
    with pytest.raises(aw.WaitError):
        aw.normalize_config_sha256(value)


@pytest.mark.parametrize("method, version, expected", [
    ("auto", (1, 37), "metrics"), ("auto", (1, 34), "metrics"), ("auto", (1, 33), "canary"),
    ("auto", (2, 0), "metrics"), ("auto", None, None), ("auto", (1, None), None),
    ("canary", (1, 37), "canary"), ("metrics", (1, 30), "metrics"),
])
def test_resolve_method(method, version, expected):
    assert aw.resolve_method(method, version) == expected


@pytest.mark.parametrize("expected, observed, match", [
    ("secretbox:k2", "secretbox:k2", True), ("secretbox:k2", "secretbox:k1", False),
    ("identity", "identity", True), ("kms:vault", "kms:v2:vault", True), ("kms:vault", "kms:v1:vault", True),
    ("kms:vault", "kms:v2:other", False), ("kms:v2:vault", "kms:v2:vault", True), ("aescbc:k", None, False),
    (None, "identity", False),
])
def test_write_provider_matches(expected, observed, match):
    assert aw.write_provider_matches(expected, observed) is match


def test_start_time_moved_at_one_second_resolution():
    assert aw.start_time_moved(None, START_TIME) is None
    assert aw.start_time_moved(START_TIME, None) is None
    assert aw.start_time_moved(START_TIME, START_TIME) is False
    assert aw.start_time_moved(int(START_TIME), START_TIME) is False  # rounded by a playbook
    assert aw.start_time_moved(START_TIME, START_TIME + 12.5) is True


@pytest.mark.parametrize("server, name", [
    ("https://10.0.0.11:6443", "kubecrypt-canary-10.0.0.11-6443"),
    ("https://[fd00::11]:6443/", "kubecrypt-canary-fd00--11-6443"),
    ("https://CP1.Example.com", "kubecrypt-canary-cp1.example.com"),
    ("https://x_y:6443/prefix", "kubecrypt-canary-x-y-6443"),
])
def test_default_canary_name(server, name):
    assert aw.default_canary_name(server) == name


def test_expectation_validation():
    with pytest.raises(aw.WaitError, match="previous_start_time"):
        aw.Expectation(expect="restart")
    with pytest.raises(aw.WaitError):
        aw.Expectation(expect="sometimes")
    with pytest.raises(aw.WaitError):
        aw.Expectation(method="guess")
    with pytest.raises(aw.WaitError, match="expected_write_provider"):
        aw.Expectation(config_sha256=CONFIG1_SHA256).check_method("canary", (1, 30))
    with pytest.raises(aw.WaitError, match="1.34"):
        aw.Expectation(config_sha256=CONFIG1_SHA256, method="metrics").check_method("metrics", (1, 33))
    aw.Expectation(config_sha256=CONFIG1_SHA256, expected_write_provider="secretbox:k").check_method("canary", (1, 30))


# ---------------------------------------------------------------------------
# The verdict on recorded observations


def _observed(readyz=READYZ_OK, metrics=METRICS_STARTED, version=None, provider=None):
    observation = aw.Observation.from_responses(readyz, (200, metrics), version or VERSION)
    observation.observed_write_provider = provider
    return observation


def test_verdict_metrics_hash_served_at_startup():
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256)
    assert aw.evaluate(expectation, _observed(), "metrics").done


def test_verdict_restart_needs_the_start_time_to_move():
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256, previous_start_time=START_TIME, expect="restart")
    verdict = aw.evaluate(expectation, _observed(), "metrics")
    assert not verdict.done and not verdict.fatal
    assert "a restart" in verdict.waiting_for[0]
    expectation.previous_start_time = START_TIME - 300
    assert aw.evaluate(expectation, _observed(), "metrics").done


def test_verdict_any_with_previous_start_time_requires_a_restart():
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256, previous_start_time=START_TIME)
    assert not aw.evaluate(expectation, _observed(), "metrics").done


def test_verdict_reload_waits_for_the_new_hash_in_the_same_process():
    expectation = aw.Expectation(config_sha256=CONFIG2_SHA256, previous_start_time=START_TIME, expect="reload")
    before = aw.evaluate(expectation, _observed(metrics=METRICS_STARTED), "metrics")
    assert not before.done and not before.fatal
    assert "sha256:" + CONFIG1_SHA256 in before.waiting_for[0]
    assert aw.evaluate(expectation, _observed(metrics=METRICS_RELOADED), "metrics").done


def test_verdict_reload_fails_at_once_when_the_apiserver_restarted():
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256, previous_start_time=START_TIME - 60, expect="reload")
    verdict = aw.evaluate(expectation, _observed(), "metrics")
    assert verdict.fatal and "restarted" in verdict.fatal


def test_verdict_rejected_reload_keeps_waiting_and_reports_failures():
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256, expect="reload")
    observation = _observed(metrics=METRICS_RELOAD_FAILED)
    verdict = aw.evaluate(expectation, observation, "metrics")
    assert not verdict.done and not verdict.fatal
    assert "automatic reload failures: 9" in observation.summary()


def test_verdict_without_encryption_names_the_missing_metric():
    verdict = aw.evaluate(aw.Expectation(config_sha256=CONFIG1_SHA256), _observed(metrics=METRICS_NO_ENCRYPTION),
                          "metrics")
    assert "no encryption configuration is loaded" in verdict.waiting_for[0]


def test_verdict_not_ready_and_unreachable():
    expectation = aw.Expectation()
    starting = _observed(readyz=READYZ_STARTING)
    verdict = aw.evaluate(expectation, starting, "metrics")
    assert verdict.waiting_for == ["/readyz to be ok (HTTP 500: [-]poststarthook/rbac/bootstrap-roles failed: "
                                   "reason withheld)"]
    down = aw.Observation(error="connection refused")
    assert aw.evaluate(expectation, down, None).waiting_for == ["the apiserver to answer (connection refused)"]
    assert down.summary() == "no answer (connection refused)"


def test_verdict_info_call_needs_only_readyz():
    assert aw.evaluate(aw.Expectation(), _observed(metrics=METRICS_NO_ENCRYPTION), "metrics").done


def test_verdict_waits_for_the_version_with_auto():
    verdict = aw.evaluate(aw.Expectation(), _observed(), None)
    assert verdict.waiting_for == ["the server version (GET /version) to choose the method"]


def test_verdict_canary():
    expectation = aw.Expectation(expected_write_provider="secretbox:k2", config_sha256=CONFIG1_SHA256)
    assert not aw.evaluate(expectation, _observed(provider="identity"), "canary").done
    assert aw.evaluate(expectation, _observed(provider="secretbox:k2"), "canary").done
    # The config hash is not checked with the canary method (the metric does not exist before 1.34).
    assert aw.evaluate(expectation, _observed(metrics=METRICS_NO_ENCRYPTION, provider="secretbox:k2"), "canary").done
    # In check mode the canary is not written and not waited for.
    no_canary = aw.Expectation(expected_write_provider="secretbox:k2", canary=False)
    assert aw.evaluate(no_canary, _observed(), "canary").done


def test_needs_canary_only_when_ready_and_restarted():
    expectation = aw.Expectation(expected_write_provider="secretbox:k2", previous_start_time=START_TIME)
    assert not aw.needs_canary(expectation, _observed(), "canary")  # not restarted yet
    assert not aw.needs_canary(expectation, _observed(readyz=READYZ_STARTING), "canary")
    expectation.previous_start_time = START_TIME - 100
    assert aw.needs_canary(expectation, _observed(), "canary")
    assert not aw.needs_canary(expectation, _observed(), "metrics")


def test_observation_from_responses():
    observation = aw.Observation.from_responses(READYZ_STARTING, (200, METRICS_RELOADED), VERSION_OLD)
    assert observation.version == (1, 33)
    assert observation.git_version == "v1.33.4-eks-1"
    assert observation.config_hash == "sha256:" + CONFIG2_SHA256
    forbidden = aw.Observation.from_responses(READYZ_OK, (403, "forbidden"))
    assert forbidden.metrics_error == "GET /metrics: HTTP 403"
    assert forbidden.process_start_time is None
    verbose = aw.Observation.from_responses((500, "readyz check failed"), verbose_readyz=READYZ_STARTING)
    assert "bootstrap-roles" in verbose.readyz


def test_summary_never_contains_more_than_observed_facts():
    observation = _observed(metrics=METRICS_RELOAD_FAILED, provider="secretbox:k2")
    observation.canary_error = "reading the canary from etcd: timed out"
    summary = observation.summary()
    for fact in ("readyz: ok", "sha256:" + CONFIG2_SHA256, "2026-", "canary written with: secretbox:k2", "timed out"):
        assert fact in summary


# ---------------------------------------------------------------------------
# The wait loop with a fake clock


class FakeClock(object):
    def __init__(self):
        self.time = 1000.0
        self.sleeps = []

    def now(self):
        return self.time

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.time += seconds


def test_wait_for_returns_when_done():
    clock = FakeClock()
    answers = iter([_observed(readyz=READYZ_STARTING), _observed(readyz=READYZ_STARTING), _observed()])
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256)
    observation, verdict, elapsed, timed_out = aw.wait_for(
        lambda: next(answers), lambda o: aw.evaluate(expectation, o, "metrics"), 60, 2, clock)
    assert verdict.done and not timed_out
    assert elapsed == 4.0 and clock.sleeps == [2, 2]
    assert observation.ready


def test_wait_for_times_out_with_the_last_observation():
    clock = FakeClock()
    expectation = aw.Expectation(config_sha256=CONFIG2_SHA256)
    observation, verdict, elapsed, timed_out = aw.wait_for(
        _observed, lambda o: aw.evaluate(expectation, o, "metrics"), 5, 2, clock)
    assert timed_out and not verdict.done
    assert elapsed == 5.0 and clock.sleeps == [2, 2, 1]
    assert observation.config_hash == "sha256:" + CONFIG1_SHA256


def test_wait_for_with_zero_timeout_observes_once():
    clock = FakeClock()
    calls = []

    def observe():
        calls.append(1)
        return _observed(readyz=READYZ_STARTING)

    _o, verdict, _e, timed_out = aw.wait_for(observe, lambda o: aw.evaluate(aw.Expectation(), o, "metrics"), 0, 2,
                                             clock)
    assert calls == [1] and timed_out and not clock.sleeps


def test_wait_for_stops_on_fatal():
    clock = FakeClock()
    expectation = aw.Expectation(previous_start_time=START_TIME - 60, expect="reload")
    _o, verdict, _e, timed_out = aw.wait_for(_observed, lambda o: aw.evaluate(expectation, o, "metrics"), 60, 2,
                                             clock)
    assert verdict.fatal and not timed_out and not clock.sleeps


# ---------------------------------------------------------------------------
# The backend with a recorded server


class RecordedClient(object):
    """Plays back a script of server states: each a dict of path -> (status, body)."""

    server = "https://10.0.0.11:6443"

    def __init__(self, states):
        self.states = list(states)
        self.requests = []
        self.closed = False

    def get_raw(self, path, query=None, line_filter=None):
        if path == "/readyz" and not query:
            # Each poll starts with /readyz: move to the next state.
            if len(self.states) > 1 and self.requests:
                self.states.pop(0)
        self.requests.append(("GET", path + ("?verbose" if query else "")))
        state = self.states[0]
        if state == "down":
            raise ApiError(None, "ConnectionError", path, "GET", "connection refused")
        status, body = state[path + ("?verbose" if query else "")] if query else state[path]
        if line_filter:
            body = "\n".join(line for line in body.splitlines() if line_filter(line))
        return status, body

    def server_version(self):
        self.requests.append(("GET", "/version"))
        version = self.states[0]["/version"]
        return aw._number(version["major"]), aw._number(version["minor"]), version["gitVersion"]

    def request(self, method, path, query=None, body=None, content_type=None, accept=None):
        self.requests.append((method, path))
        state = self.states[0]
        outcome = state.get("canary", {}).get(method, (200, {}))
        if outcome[0] >= 400:
            raise ApiError(outcome[0], "NotFound" if outcome[0] == 404 else "Error", path, method, "no")
        return outcome[0], {}, outcome[1]

    def close(self):
        self.closed = True


def _state(readyz=READYZ_OK, metrics=METRICS_STARTED, version=None, **extra):
    state = {"/readyz": readyz, "/readyz?verbose": READYZ_STARTING if readyz != READYZ_OK else READYZ_OK_VERBOSE,
             "/metrics": (200, metrics), "/version": version or VERSION}
    state.update(extra)
    return state


def _run(client, expectation, timeout=30, etcd_values=None, **kwargs):
    clock = FakeClock()
    stored = dict(etcd_values or {})

    class Etcd(object):
        def get(self, key):
            return stored.get(key)

        def close(self):
            pass

    waiter = aw.ApiserverWait(client, expectation, "kube-system", "kubecrypt-canary-x", etcd=Etcd,
                              classify=lambda raw: raw.decode(), canary_key=lambda ns, name: "/registry/secrets/%s/%s" %
                              (ns, name), **kwargs)
    return waiter, waiter.run(timeout, 2, clock)


def test_backend_restart_seen_through_downtime():
    client = RecordedClient([_state(metrics=METRICS_NO_ENCRYPTION), "down", _state(readyz=READYZ_STARTING), _state()])
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256, previous_start_time=1795388635.88, expect="restart")
    waiter, (result, failure) = _run(client, expectation)
    assert failure is None
    assert result["ready"] and result["method"] == "metrics" and result["restarted"] is True
    assert result["config_hash"] == "sha256:" + CONFIG1_SHA256
    assert result["process_start_time"] == pytest.approx(START_TIME)
    assert result["server_version"] == "v1.37.2"
    assert result["observed_write_provider"] is None and waiter.canary_writes == 0


def test_backend_timeout_message_names_what_was_seen():
    client = RecordedClient([_state(readyz=READYZ_STARTING, metrics=METRICS_RELOAD_FAILED)])
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256)
    _w, (result, failure) = _run(client, expectation, timeout=6)
    assert failure.startswith("https://10.0.0.11:6443 did not serve the expected configuration within 6s")
    assert "bootstrap-roles failed" in failure and "automatic reload failures: 9" in failure
    assert "sha256:" + CONFIG2_SHA256 in failure and "process_start_time: 1795389630.31" in failure
    assert result["ready"] is False and result["elapsed"] == 6.0


def test_backend_refuses_bad_credentials():
    client = RecordedClient([_state(readyz=(403, "forbidden"))])
    with pytest.raises(aw.WaitError, match="HTTP 403"):
        _run(client, aw.Expectation())


def test_backend_canary_on_an_old_server():
    key = "/registry/secrets/kube-system/kubecrypt-canary-x"
    client = RecordedClient([_state(metrics=METRICS_NO_ENCRYPTION, version=VERSION_OLD,
                                    canary={"PATCH": (404, None), "POST": (201, {})})])
    expectation = aw.Expectation(config_sha256=CONFIG1_SHA256, expected_write_provider="secretbox:k2")
    waiter, (result, failure) = _run(client, expectation, etcd_values={key: b"secretbox:k2"})
    assert failure is None and result["method"] == "canary" and result["observed_write_provider"] == "secretbox:k2"
    assert ("PATCH", "/api/v1/namespaces/kube-system/secrets/kubecrypt-canary-x") in client.requests
    assert ("POST", "/api/v1/namespaces/kube-system/secrets") in client.requests
    assert waiter.canary_writes == 1


def test_backend_canary_keeps_writing_until_the_provider_matches():
    client = RecordedClient([_state(version=VERSION_OLD)])
    expectation = aw.Expectation(expected_write_provider="secretbox:k2")
    waiter, (result, failure) = _run(client, expectation, timeout=4,
                                     etcd_values={"/registry/secrets/kube-system/kubecrypt-canary-x": b"identity"})
    assert "a canary secret written with secretbox:k2 (last: identity)" in failure
    assert waiter.canary_writes == 3


def test_backend_canary_is_skipped_in_check_mode():
    client = RecordedClient([_state(version=VERSION_OLD)])
    expectation = aw.Expectation(expected_write_provider="secretbox:k2", canary=False)
    waiter, (result, failure) = _run(client, expectation)
    assert failure is None and waiter.canary_writes == 0
    assert not [r for r in client.requests if r[0] != "GET"]


def test_backend_canary_on_old_server_without_provider_is_refused():
    client = RecordedClient([_state(version=VERSION_OLD)])
    with pytest.raises(aw.WaitError, match="expected_write_provider"):
        _run(client, aw.Expectation(config_sha256=CONFIG1_SHA256))


def test_run_module_glue():
    client = RecordedClient([_state()])
    params = dict(config_sha256="sha256:" + CONFIG1_SHA256, previous_start_time=None, expect="any", method="auto",
                  expected_write_provider="kms:vault", canary_namespace="kube-system", canary_name=None,
                  etcd_prefix="/registry", etcd_endpoints=None, host="https://10.0.0.11:6443", wait_timeout=0,
                  wait_sleep=1)
    seen = {}

    def client_factory(p, timeout):
        seen["timeout"] = timeout
        return client

    result, failure, warnings = aw.run_module(params, True, client_factory, None)
    assert failure is None and client.closed and seen["timeout"] == 5
    assert warnings == ["check mode: no canary secret is written, so the write provider is not verified"]
    assert "canary" not in result


def test_backend_canary_in_a_missing_namespace_fails_at_once():
    client = RecordedClient([_state(version=VERSION_OLD, canary={"PATCH": (404, None), "POST": (404, None)})])
    with pytest.raises(ApiError) as caught:
        _run(client, aw.Expectation(expected_write_provider="secretbox:k2"))
    assert caught.value.status == 404 and caught.value.method == "POST"
