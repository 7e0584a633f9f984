# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Wait until one node's kube-apiserver serves the expected encryption configuration.

The waiting is pure predicates over an ``Observation`` plus a clock
(``time.monotonic``), so it is tested with recorded ``/readyz`` and
``/metrics`` answers; ``ApiserverWait`` is the backend of the
``apiserver_wait`` module that makes the observations.

What kube-apiserver v1.37 shows (verified on a real apiserver):

* ``apiserver_encryption_config_controller_last_config_info{apiserver_id_hash=
  "sha256:...",hash="sha256:<hex sha256 of the file bytes>"} 1`` is set when
  the configuration is loaded at start-up, with and without
  ``--encryption-provider-config-automatic-reload``, and replaced (one series
  per apiserver identity) after each successful automatic reload.  There is
  no such series when the apiserver runs without an encryption configuration.
* A reload that fails validation keeps the old hash and counts
  ``apiserver_encryption_config_controller_automatic_reloads_total{status=
  "failure"}``; ``/readyz`` stays ``ok``.
* ``process_start_time_seconds`` is printed with ten-millisecond precision.

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import base64
import re
import time

from urllib.parse import quote

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import METADATA, MERGE_PATCH, ApiError

CONFIG_INFO_METRIC = "apiserver_encryption_config_controller_last_config_info"
RELOADS_METRIC = "apiserver_encryption_config_controller_automatic_reloads_total"
RELOAD_TIMESTAMP_METRIC = "apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds"
START_TIME_METRIC = "process_start_time_seconds"
_METRIC_NAMES = (CONFIG_INFO_METRIC, RELOADS_METRIC, RELOAD_TIMESTAMP_METRIC, START_TIME_METRIC)
# The config hash metric exists from Kubernetes 1.34 on.
METRICS_MIN_VERSION = (1, 34)
# Start times are compared at one-second resolution: a restart takes longer,
# and a value passed through a playbook may have been rounded.
START_TIME_RESOLUTION = 1.0
METHODS = ("auto", "metrics", "canary")
EXPECTS = ("any", "restart", "reload")
CANARY_PREFIX = "kubecrypt-canary-"
CANARY_ANNOTATION = "at-rest.kubecrypt.io/canary-written-at"
CANARY_LABELS = {"app.kubernetes.io/managed-by": "kubecrypt.at_rest"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DNS_LABEL_CHARS = re.compile(r"[^a-z0-9.-]+")
_READYZ_DETAIL_LIMIT = 400


class WaitError(Exception):
    """The options do not describe something that can be waited for."""


# ---------------------------------------------------------------------------
# Parsing what the apiserver serves
# ---------------------------------------------------------------------------

def metrics_line_filter(line):
    """Keep only the samples this module reads (``/metrics`` is megabytes)."""
    return line.startswith(_METRIC_NAMES)


def parse_metrics(text):
    """The samples of ``/metrics`` text this module uses, as a dict.

    ``process_start_time``: float or None; ``config_hashes``: the ``hash``
    labels of every ``..._last_config_info`` series (``sha256:<hex>``);
    ``reload_successes``/``reload_failures``: the automatic reload counters;
    ``last_reload_success``/``last_reload_failure``: their timestamps.
    """
    result = dict(process_start_time=None, config_hashes=[], reload_successes=0, reload_failures=0,
                  last_reload_success=None, last_reload_failure=None)
    for line in text.splitlines():
        sample = _parse_sample(line)
        if sample is None:
            continue
        name, labels, value = sample
        if name == START_TIME_METRIC:
            result["process_start_time"] = value
        elif name == CONFIG_INFO_METRIC and value == 1 and labels.get("hash"):
            if labels["hash"] not in result["config_hashes"]:
                result["config_hashes"].append(labels["hash"])
        elif name == RELOADS_METRIC:
            key = "reload_failures" if labels.get("status") == "failure" else "reload_successes"
            result[key] += int(value)
        elif name == RELOAD_TIMESTAMP_METRIC:
            key = "last_reload_failure" if labels.get("status") == "failure" else "last_reload_success"
            result[key] = max(value, result[key] or 0.0)
    return result


def _parse_sample(line):
    """``(name, labels, value)`` of a Prometheus text sample line, None for anything else."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    match = _SAMPLE.match(line)
    if not match:
        return None
    try:
        value = float(match.group(4))
    except ValueError:
        return None
    labels = dict((key, _unescape(raw)) for key, raw in _LABEL.findall(match.group(3) or ""))
    return match.group(1), labels, value


def _unescape(raw):
    return raw.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse_readyz(status, body):
    """``(ready, detail)``: ready is HTTP 200 with the body ``ok``; detail is short and safe to show."""
    text = (body or "").strip()
    if status == 200 and text == "ok":
        return True, "ok"
    failed = [line for line in text.splitlines() if line.startswith("[-]")]
    if failed:
        detail = "; ".join(failed)
    else:
        detail = " ".join(text.split())
    detail = ("HTTP %s: %s" % (status, detail)) if status else detail
    if len(detail) > _READYZ_DETAIL_LIMIT:
        detail = detail[:_READYZ_DETAIL_LIMIT - 3] + "..."
    return False, detail


def normalize_config_sha256(value):
    """``config_sha256`` as 64 lowercase hex digits (a ``sha256:`` prefix is accepted); None stays None."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if not _SHA256.fullmatch(text):
        raise WaitError("config_sha256 must be the hex SHA-256 of the EncryptionConfiguration file (64 hex digits)")
    return text


def resolve_method(method, version):
    """``metrics`` or ``canary`` for ``method`` on a server of ``version`` ``(major, minor)``."""
    if method != "auto":
        return method
    if version is None or version[0] is None or version[1] is None:
        return None
    return "metrics" if tuple(version[:2]) >= METRICS_MIN_VERSION else "canary"


def write_provider_matches(expected, observed):
    """Whether a canary classified as ``observed`` was written by ``expected``.

    ``kms:<name>`` (how ``encryption_config_info`` names a kms provider)
    matches ``kms:v1:<name>`` and ``kms:v2:<name>``.
    """
    if not expected or not observed:
        return False
    expected, observed = _kms_v2_as_kms(expected), _kms_v2_as_kms(observed)
    if expected == observed:
        return True
    parts = expected.split(":")
    if len(parts) == 2 and parts[0] == "kms":
        observed_parts = observed.split(":")
        return len(observed_parts) >= 3 and observed_parts[0] == "kms" and observed_parts[2] == parts[1]
    return False


def _kms_v2_as_kms(notation):
    """``kms:v2:<name>`` as ``kms:<name>``, the notation of a kms v2 provider everywhere else."""
    return "kms:" + notation[len("kms:v2:"):] if notation.startswith("kms:v2:") else notation


def start_time_moved(previous, current):
    if previous is None or current is None:
        return None
    return abs(float(current) - float(previous)) >= START_TIME_RESOLUTION


def default_canary_name(server):
    """``kubecrypt-canary-<host>-<port>`` for an apiserver URL: one canary per node endpoint."""
    text = server.split("://", 1)[-1].split("/", 1)[0].lower()
    text = _DNS_LABEL_CHARS.sub("-", text.replace(":", "-").replace("[", "").replace("]", ""))
    text = text.strip(".-") or "apiserver"
    return (CANARY_PREFIX + text)[:253].rstrip(".-")


# ---------------------------------------------------------------------------
# Expectation, observation, verdict: the pure part
# ---------------------------------------------------------------------------

class Expectation(object):
    """What the caller waits for.

    ``method`` is ``auto``, ``metrics`` or ``canary``; ``canary`` (bool) says
    whether a canary may be written (not in check mode).
    """

    def __init__(self, config_sha256=None, previous_start_time=None, expect="any", method="auto",
                 expected_write_provider=None, canary=True):
        if expect not in EXPECTS:
            raise WaitError("expect must be one of %s" % ", ".join(EXPECTS))
        if method not in METHODS:
            raise WaitError("method must be one of %s" % ", ".join(METHODS))
        if expect == "restart" and previous_start_time is None:
            raise WaitError("expect=restart needs previous_start_time, the process_start_time observed before "
                            "the change (call this module before the change to record it)")
        self.config_sha256 = normalize_config_sha256(config_sha256)
        self.previous_start_time = float(previous_start_time) if previous_start_time is not None else None
        self.expect = expect
        self.method = method
        self.expected_write_provider = expected_write_provider or None
        self.canary = canary

    def wants_restart(self):
        return self.previous_start_time is not None and self.expect in ("any", "restart")

    def wants_same_process(self):
        return self.previous_start_time is not None and self.expect == "reload"

    def check_method(self, resolved, version=None):
        """Refuse a combination that can never be confirmed; ``resolved`` is ``metrics`` or ``canary``."""
        if resolved == "metrics" and self.config_sha256 and version and None not in version[:2] \
                and tuple(version[:2]) < METRICS_MIN_VERSION:
            raise WaitError("method=metrics needs Kubernetes %d.%d or later to report the config hash, and this "
                            "apiserver is %s.%s: use method=canary (or auto) with expected_write_provider" % (
                                METRICS_MIN_VERSION + tuple(version[:2])))
        if resolved == "canary" and self.config_sha256 and not self.expected_write_provider:
            raise WaitError("the canary method cannot check config_sha256 (this apiserver reports the config hash "
                            "only from Kubernetes 1.34 on): give expected_write_provider so that a canary secret "
                            "confirms the configuration")

    def wants_canary(self, resolved):
        """Whether the canary is part of the verdict for the resolved method."""
        return resolved == "canary" and bool(self.expected_write_provider) and self.canary


class Observation(object):
    """What one poll of the apiserver showed.  Never holds key material."""

    def __init__(self, reachable=False, error=None, ready=False, readyz="", process_start_time=None,
                 config_hashes=None, reload_successes=0, reload_failures=0, last_reload_success=None,
                 last_reload_failure=None, metrics_error=None, version=None, git_version=None,
                 observed_write_provider=None, canary_error=None):
        self.reachable = reachable
        self.error = error
        self.ready = ready
        self.readyz = readyz
        self.process_start_time = process_start_time
        self.config_hashes = list(config_hashes or [])
        self.reload_successes = reload_successes
        self.reload_failures = reload_failures
        self.last_reload_success = last_reload_success
        self.last_reload_failure = last_reload_failure
        self.metrics_error = metrics_error
        self.version = version
        self.git_version = git_version
        self.observed_write_provider = observed_write_provider
        self.canary_error = canary_error

    @classmethod
    def from_responses(cls, readyz, metrics=None, version=None, verbose_readyz=None):
        """Build an observation from recorded answers: each ``(status, body)``; ``version`` a /version dict."""
        status, body = readyz
        ready, detail = parse_readyz(status, body)
        if not ready and verbose_readyz is not None:
            detail = parse_readyz(*verbose_readyz)[1]
        observation = cls(reachable=True, ready=ready, readyz=detail)
        if metrics is not None:
            observation.add_metrics(*metrics)
        if version is not None:
            observation.version = (_number(version.get("major")), _number(version.get("minor")))
            observation.git_version = version.get("gitVersion")
        return observation

    def add_metrics(self, status, text):
        if status != 200:
            self.metrics_error = "GET /metrics: HTTP %s" % status
            return
        for key, value in parse_metrics(text).items():
            setattr(self, key, value)

    @property
    def config_hash(self):
        """The served config hash (``sha256:<hex>``); the last one if several identities report."""
        return self.config_hashes[-1] if self.config_hashes else None

    def summary(self):
        """What was seen, as a short text for a failure message."""
        if not self.reachable:
            return "no answer (%s)" % self.error
        parts = ["readyz: %s" % self.readyz,
                 "process_start_time: %s" % _format_time(self.process_start_time),
                 "config hash: %s" % (", ".join(self.config_hashes) or "none reported")]
        if self.metrics_error:
            parts.append(self.metrics_error)
        if self.reload_failures:
            parts.append("automatic reload failures: %d (last at %s)" % (
                self.reload_failures, _format_time(self.last_reload_failure)))
        if self.observed_write_provider:
            parts.append("canary written with: %s" % self.observed_write_provider)
        if self.canary_error:
            parts.append("canary: %s" % self.canary_error)
        return "; ".join(parts)


class Verdict(object):
    """``done`` when everything expected is seen; ``fatal`` when it never can be; else ``waiting_for``."""

    def __init__(self, waiting_for=None, fatal=None):
        self.waiting_for = list(waiting_for or [])
        self.fatal = fatal

    @property
    def done(self):
        return not self.waiting_for and not self.fatal


def needs_canary(expectation, observation, resolved):
    """Write the canary now?  Only once the node serves and has restarted if it must."""
    if not expectation.wants_canary(resolved) or not (observation.reachable and observation.ready):
        return False
    if expectation.wants_restart():
        return bool(start_time_moved(expectation.previous_start_time, observation.process_start_time))
    return True


def evaluate(expectation, observation, resolved):
    """The ``Verdict`` for one observation; ``resolved`` is the method (None while the version is unknown)."""
    if not observation.reachable:
        return Verdict(["the apiserver to answer (%s)" % observation.error])
    waiting = []
    if not observation.ready:
        waiting.append("/readyz to be ok (%s)" % observation.readyz)
    if resolved is None:
        waiting.append("the server version (GET /version) to choose the method")
    moved = start_time_moved(expectation.previous_start_time, observation.process_start_time)
    if expectation.previous_start_time is not None and moved is None:
        waiting.append("%s in /metrics%s" % (
            START_TIME_METRIC, (" (%s)" % observation.metrics_error) if observation.metrics_error else ""))
    elif expectation.wants_same_process() and moved:
        return Verdict(fatal="expected an automatic reload, but the apiserver restarted (process_start_time %s, "
                             "was %s)" % (_format_time(observation.process_start_time),
                                          _format_time(expectation.previous_start_time)))
    elif expectation.wants_restart() and not moved:
        waiting.append("a restart (process_start_time is still %s)" % _format_time(observation.process_start_time))
    if resolved == "metrics" and expectation.config_sha256:
        expected = "sha256:" + expectation.config_sha256
        if observation.config_hash != expected:
            waiting.append("%s to report hash %s (served: %s)" % (
                CONFIG_INFO_METRIC, expected, ", ".join(observation.config_hashes)
                or "none, so no encryption configuration is loaded"))
    if expectation.wants_canary(resolved) and not write_provider_matches(
            expectation.expected_write_provider, observation.observed_write_provider):
        waiting.append("a canary secret written with %s (last: %s)" % (
            expectation.expected_write_provider,
            observation.observed_write_provider or observation.canary_error or "not written yet"))
    return Verdict(waiting)


class Clock(object):
    """Monotonic time and sleeping; tests substitute a fake one."""

    def now(self):
        return time.monotonic()

    def sleep(self, seconds):
        time.sleep(seconds)


def wait_for(observe, judge, timeout, sleep, clock=None):
    """Poll ``observe()`` and ``judge(observation)`` until done, fatal or ``timeout`` seconds pass.

    Returns ``(observation, verdict, elapsed, timed_out)``.  The last
    observation is always made, even with ``timeout`` 0.
    """
    clock = clock or Clock()
    started = clock.now()
    while True:
        observation = observe()
        verdict = judge(observation)
        elapsed = clock.now() - started
        if verdict.done or verdict.fatal:
            return observation, verdict, elapsed, False
        remaining = timeout - elapsed
        if remaining <= 0:
            return observation, verdict, elapsed, True
        clock.sleep(max(0.0, min(sleep, remaining)))


# ---------------------------------------------------------------------------
# The backend: observations over the API and etcd
# ---------------------------------------------------------------------------

class ApiserverWait(object):
    """Observe one apiserver until it serves what ``expectation`` says.

    ``client`` is a ``k8s.ApiClient`` for the node's own endpoint; ``etcd``
    returns an ``EtcdClient`` when called (only the canary needs one);
    ``classify`` is ``etcd_encryption.classify``; ``canary_key`` maps
    (namespace, name) to the canary's etcd key.
    """

    def __init__(self, client, expectation, canary_namespace, canary_name, etcd=None, classify=None,
                 canary_key=None):
        self.client = client
        self.expectation = expectation
        self.canary_namespace = canary_namespace
        self.canary_name = canary_name
        self._etcd_factory = etcd
        self._etcd = None
        self._classify = classify
        self._canary_key = canary_key
        self._version = None
        self._git_version = None
        self.resolved = None if expectation.method == "auto" else expectation.method
        self.canary_writes = 0

    def close(self):
        if self._etcd is not None:
            self._etcd.close()
            self._etcd = None

    def observe(self):
        observation = Observation()
        try:
            status, body = self.client.get_raw("/readyz")
            if status in (401, 403):
                raise WaitError("GET %s/readyz: HTTP %d: the credentials are not accepted or not allowed to read "
                                "/readyz, /metrics and /version" % (self.client.server, status))
            observation.reachable = True
            observation.ready, observation.readyz = parse_readyz(status, body)
            if not observation.ready:
                observation.readyz = parse_readyz(*self.client.get_raw("/readyz", {"verbose": "true"}))[1]
            observation.add_metrics(*self.client.get_raw("/metrics", line_filter=metrics_line_filter))
            if self._version is None:
                self._read_version(observation)
        except ApiError as exc:
            if exc.status is not None:
                raise
            observation.reachable = False
            observation.error = exc.message or exc.reason
            return observation
        observation.version = self._version
        observation.git_version = self._git_version
        if needs_canary(self.expectation, observation, self.resolved):
            self._write_and_read_canary(observation)
        return observation

    def _read_version(self, observation):
        try:
            major, minor, git_version = self.client.server_version()
        except ApiError as exc:
            if exc.status is not None and (exc.status >= 500 or exc.status == 429):
                observation.metrics_error = str(exc)  # still starting: try again next time
                return
            raise
        self._version, self._git_version = (major, minor), git_version
        if self.resolved is None:
            self.resolved = resolve_method(self.expectation.method, self._version)
        self.expectation.check_method(self.resolved, self._version)

    def judge(self, observation):
        return evaluate(self.expectation, observation, self.resolved)

    def _write_and_read_canary(self, observation):
        if self._etcd is None:
            # A missing or unusable etcd configuration fails at once.
            self._etcd = self._etcd_factory()
        try:
            self._write_canary()
        except ApiError as exc:
            if exc.status in (401, 403, 404, 422):
                # Not allowed, no such namespace, or refused: writing again will not help.
                raise
            observation.canary_error = "writing the canary secret: %s" % exc
            return
        try:
            raw = self._etcd.get(self._canary_key(self.canary_namespace, self.canary_name))
        except Exception as exc:  # pylint: disable=broad-except  # etcd errors are reported, then retried
            observation.canary_error = "reading the canary from etcd: %s" % exc
            return
        if raw is None:
            observation.canary_error = "the canary secret is not in etcd under the expected key (check etcd_prefix)"
            return
        observation.observed_write_provider = self._classify(raw)

    def _write_canary(self):
        """Create or change the canary secret, so that this apiserver writes it with its current write key."""
        self.canary_writes += 1
        stamp = "%.6f-%d" % (time.time(), self.canary_writes)
        path = "/api/v1/namespaces/%s/secrets/%s" % (quote(self.canary_namespace, safe=""),
                                                     quote(self.canary_name, safe=""))
        patch = {"metadata": {"annotations": {CANARY_ANNOTATION: stamp}}}
        try:
            self.client.request("PATCH", path, body=patch, content_type=MERGE_PATCH, accept=METADATA)
            return
        except ApiError as exc:
            if exc.status != 404:
                raise
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": self.canary_name, "namespace": self.canary_namespace,
                         "labels": dict(CANARY_LABELS), "annotations": {CANARY_ANNOTATION: stamp}},
            "data": {"canary": base64.b64encode(b"written by kubecrypt.at_rest.apiserver_wait").decode("ascii")},
        }
        try:
            self.client.request("POST", "/api/v1/namespaces/%s/secrets" % quote(self.canary_namespace, safe=""),
                                body=secret, accept=METADATA)
        except ApiError as exc:
            if exc.status != 409:  # created meanwhile: the next poll patches it
                raise

    def run(self, timeout, sleep, clock=None):
        """Wait; return ``(result dict, failure message or None)``."""
        observation, verdict, elapsed, timed_out = wait_for(self.observe, self.judge, timeout, sleep, clock)
        result = dict(
            ready=observation.ready,
            process_start_time=observation.process_start_time,
            config_hash=observation.config_hash,
            method=self.resolved,
            observed_write_provider=observation.observed_write_provider,
            restarted=start_time_moved(self.expectation.previous_start_time, observation.process_start_time),
            server_version=observation.git_version,
            elapsed=round(elapsed, 3),
        )
        if verdict.fatal:
            return result, "%s: %s. Last seen: %s" % (self.client.server, verdict.fatal, observation.summary())
        if timed_out:
            return result, "%s did not serve the expected configuration within %ss; waiting for %s. Last seen: %s" % (
                self.client.server, timeout, "; ".join(verdict.waiting_for), observation.summary())
        return result, None


def _number(value):
    digits = re.match(r"\d+", str(value or ""))
    return int(digits.group(0)) if digits else None


def _format_time(value):
    if value is None:
        return "unknown"
    return "%.2f (%s UTC)" % (value, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(value)))


# ---------------------------------------------------------------------------
# Module glue
# ---------------------------------------------------------------------------

def argument_spec():
    """The options of the ``apiserver_wait`` module besides the k8s auth, wait and etcd ones."""
    return dict(
        config_sha256=dict(type="str"),
        previous_start_time=dict(type="float"),
        expect=dict(type="str", default="any", choices=list(EXPECTS)),
        method=dict(type="str", default="auto", choices=list(METHODS)),
        expected_write_provider=dict(type="str"),
        canary_namespace=dict(type="str", default="kube-system"),
        canary_name=dict(type="str"),
        etcd_prefix=dict(type="str", default="/registry"),
    )


def run_module(params, check_mode, client_factory, etcd_factory, clock=None):
    """Run the module's work: ``(result, failure message or None, warnings)``.

    ``client_factory(params, timeout=...)`` returns the ``ApiClient``; ``etcd_factory(params)``
    the ``EtcdClient`` (called only when a canary is read).
    """
    # Imported here so that the pure part above needs nothing but the standard library.
    from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd_encryption import (
        classify, resource_prefix, validate_notation)

    warnings = []
    provider = params.get("expected_write_provider")
    if provider:
        parts = provider.split(":")
        if not (len(parts) == 2 and parts[0] == "kms"):  # kms:<name> as encryption_config_info names it
            validate_notation(provider)
    expectation = Expectation(
        config_sha256=params.get("config_sha256"),
        previous_start_time=params.get("previous_start_time"),
        expect=params.get("expect") or "any",
        method=params.get("method") or "auto",
        expected_write_provider=provider,
        canary=not check_mode,
    )
    if check_mode and provider:
        warnings.append("check mode: no canary secret is written, so the write provider is not verified")
    # A request never blocks much longer than the whole wait may take.
    client = client_factory(params, timeout=max(5, min(30, int(params.get("wait_timeout") or 0) + 5)))
    canary_name = params.get("canary_name") or default_canary_name(params.get("host") or client.server)
    prefix = resource_prefix("secrets", params.get("etcd_prefix") or "/registry")

    def etcd():
        if not params.get("etcd_endpoints"):
            raise WaitError("the canary needs the etcd options (etcd_endpoints, etcd_ca_cert, etcd_cert, etcd_key) "
                            "to read the canary secret's stored value")
        return etcd_factory(params)

    waiter = ApiserverWait(client, expectation, params.get("canary_namespace") or "kube-system", canary_name,
                           etcd=etcd, classify=classify,
                           canary_key=lambda namespace, name: "%s%s/%s" % (prefix, namespace, name))
    try:
        result, failure = waiter.run(params.get("wait_timeout"), params.get("wait_sleep"), clock)
    finally:
        waiter.close()
        client.close()
    if waiter.canary_writes:
        result["canary"] = dict(namespace=params.get("canary_namespace") or "kube-system", name=canary_name)
    return result, failure, warnings
