# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What one node's kube-apiserver knows of its KMS v2 providers.

Pure predicates over an ``Observation`` plus a clock, tested with recorded
answers; ``KmsProviderInfo`` is the backend of the ``kms_provider_info``
module that makes the observations through the node's own endpoint.

What kube-apiserver v1.37 shows (verified on a real apiserver with a KMS v2
plugin; k8s.io/apiserver ``pkg/server/options/encryptionconfig/config.go``):

* ``/readyz/kms-providers`` answers ``ok`` (HTTP 200) while every KMS v2
  plugin of the loaded configuration is healthy, HTTP 500 with the reason
  (``kms-provider-0: rpc error: ... dial unix ...: connect: no such file or
  directory``) when one is not, and 404 when no KMS provider is configured.
  The check calls the plugin's ``Status`` when its last answer is older than
  20 seconds (3 after a failure); the apiserver also calls it once a minute.
* Every ``Status`` answer sets ``apiserver_envelope_encryption_key_id_hash_
  status_last_timestamp_seconds{provider_name, key_id_hash, apiserver_id_hash}``
  to the time of the call, with ``key_id_hash`` = ``sha256:`` + hex SHA-256
  of the key ID.  A key ID that differs from the one of the current write DEK
  makes the apiserver generate a new DEK with the plugin's ``Encrypt`` in the
  same check, and the check fails when that does not work.  So a ``Status``
  timestamp newer than some moment, followed by a passing check, proves that
  the apiserver writes under that key ID from then on.
* Series of older key IDs stay, with their last timestamp: the current key ID
  of a provider is the one with the newest timestamp.

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import re
import time

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import ApiError

HEALTH_PATH = "/readyz/kms-providers"
STATUS_METRIC = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_DETAIL_LIMIT = 400


class KmsInfoError(Exception):
    """The options do not describe something that can be observed."""


# ---------------------------------------------------------------------------
# Parsing what the apiserver serves


def metrics_line_filter(line):
    """Keep only the ``Status`` key ID samples (``/metrics`` is megabytes)."""
    return line.startswith(STATUS_METRIC)


def parse_status_metrics(text):
    """The newest ``Status`` key ID per KMS provider from ``/metrics`` text.

    Returns ``{provider name: {key_id_hash, status_timestamp, apiserver_id_hash}}``.
    """
    providers = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(STATUS_METRIC):
            continue
        match = _SAMPLE.match(line)
        if not match or match.group(1) != STATUS_METRIC:
            continue
        try:
            timestamp = float(match.group(4))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(match.group(3) or ""))
        name = labels.get("provider_name")
        if not name or not labels.get("key_id_hash"):
            continue
        current = providers.get(name)
        if current is None or timestamp > current["status_timestamp"]:
            providers[name] = {"key_id_hash": labels["key_id_hash"], "status_timestamp": timestamp,
                               "apiserver_id_hash": labels.get("apiserver_id_hash")}
    return providers


def parse_health(status, body):
    """``(configured, healthy, detail)`` of a ``/readyz/kms-providers`` answer."""
    text = " ".join((body or "").split())
    if status == 404:
        return False, False, "no KMS provider is configured"
    if status == 200 and text == "ok":
        return True, True, "ok"
    if text.startswith("internal server error: "):
        text = text[len("internal server error: "):]
    detail = "HTTP %s: %s" % (status, text)
    if len(detail) > _DETAIL_LIMIT:
        detail = detail[:_DETAIL_LIMIT - 3] + "..."
    return True, False, detail


# ---------------------------------------------------------------------------
# Observation and verdict: the pure part


class Observation(object):
    """One look at the apiserver.  Holds key ID hashes, never key IDs or key material."""

    def __init__(self, reachable=False, error=None, configured=False, healthy=False, health="",
                 providers=None):
        self.reachable = reachable
        self.error = error
        self.configured = configured
        self.healthy = healthy
        self.health = health
        self.providers = dict(providers or {})

    @classmethod
    def from_responses(cls, health, metrics):
        """From recorded answers, each ``(status, body)``."""
        configured, healthy, detail = parse_health(*health)
        observation = cls(reachable=True, configured=configured, healthy=healthy, health=detail)
        status, text = metrics
        if status == 200:
            observation.providers = parse_status_metrics(text)
        return observation

    def summary(self):
        if not self.reachable:
            return "no answer (%s)" % self.error
        parts = ["%s: %s" % (HEALTH_PATH, self.health)]
        for name in sorted(self.providers):
            provider = self.providers[name]
            parts.append("provider %s: key ID hash %s at %s" % (
                name, provider["key_id_hash"], _format_time(provider["status_timestamp"])))
        if not self.providers:
            parts.append("no Status key ID reported")
        return "; ".join(parts)


class FreshStatus(object):
    """Waiting for a ``Status`` call newer than the first answer, for each of ``providers``.

    The baseline is the first observation in which the apiserver answered:
    its newest ``Status`` timestamp per provider.  Done when each provider has
    a strictly newer one and the KMS check passes.
    """

    def __init__(self, providers):
        if not providers:
            raise KmsInfoError("fresh_status needs the names of the KMS providers (providers)")
        self.providers = list(providers)
        self.baseline = None

    def waiting_for(self, observation):
        if not observation.reachable:
            return ["the apiserver to answer (%s)" % observation.error]
        if self.baseline is None:
            self.baseline = dict((name, (observation.providers.get(name) or {}).get("status_timestamp"))
                                 for name in self.providers)
        waiting = []
        for name in self.providers:
            seen = (observation.providers.get(name) or {}).get("status_timestamp")
            before = self.baseline[name]
            if seen is None or (before is not None and seen <= before):
                waiting.append("a Status call to KMS provider %s after %s (last: %s)" % (
                    name, _format_time(before) if before is not None else "the first answer",
                    _format_time(seen) if seen is not None else "none"))
        if not observation.healthy:
            waiting.append("%s to be ok (%s)" % (HEALTH_PATH, observation.health))
        return waiting


class Clock(object):
    """Monotonic time and sleeping; tests substitute a fake one."""

    def now(self):
        return time.monotonic()

    def sleep(self, seconds):
        time.sleep(seconds)


def wait_for(observe, waiting_for, timeout, sleep, clock=None):
    """Poll until ``waiting_for(observation)`` is empty or ``timeout`` passes.

    Returns ``(observation, still waiting for, elapsed)``; the last
    observation is always made, even with ``timeout`` 0.
    """
    clock = clock or Clock()
    started = clock.now()
    while True:
        observation = observe()
        waiting = waiting_for(observation)
        elapsed = clock.now() - started
        if not waiting or elapsed >= timeout:
            return observation, waiting, elapsed
        clock.sleep(max(0.0, min(sleep, timeout - elapsed)))


# ---------------------------------------------------------------------------
# The backend


class KmsProviderInfo(object):
    """Observe one apiserver through ``client`` (a ``k8s.ApiClient`` for the node's own endpoint)."""

    def __init__(self, client):
        self.client = client

    def observe(self):
        """Ask ``/readyz/kms-providers`` first: when its last answer is old, that makes the apiserver call Status."""
        try:
            health = self.client.get_raw(HEALTH_PATH)
            if health[0] in (401, 403):
                raise KmsInfoError("GET %s%s: HTTP %d: the credentials are not accepted or not allowed to read "
                                   "/readyz and /metrics" % (self.client.server, HEALTH_PATH, health[0]))
            metrics = self.client.get_raw("/metrics", line_filter=metrics_line_filter)
        except ApiError as exc:
            if exc.status is not None:
                raise
            return Observation(reachable=False, error=exc.message or exc.reason)
        return Observation.from_responses(health, metrics)


def argument_spec():
    """The options of ``kms_provider_info`` besides the k8s auth and wait ones."""
    return dict(
        providers=dict(type="list", elements="str"),
        fresh_status=dict(type="bool", default=False),
    )


def run_module(params, client_factory, clock=None):
    """The module's work: ``(result, failure message or None)``."""
    wanted = params.get("providers")
    fresh = FreshStatus(wanted) if params.get("fresh_status") else None
    timeout = params.get("wait_timeout") or 0
    client = client_factory(params, timeout=max(5, min(30, int(timeout) + 5)))
    info = KmsProviderInfo(client)
    try:
        if fresh is None:
            started = (clock or Clock()).now()
            observation, waiting = info.observe(), []
            elapsed = (clock or Clock()).now() - started
        else:
            observation, waiting, elapsed = wait_for(info.observe, fresh.waiting_for, timeout,
                                                     params.get("wait_sleep") or 2, clock)
    finally:
        client.close()
    providers = observation.providers
    if wanted:
        providers = dict((name, providers[name]) for name in wanted if name in providers)
    result = dict(
        reachable=observation.reachable,
        kms_configured=observation.configured,
        healthy=observation.healthy,
        health=observation.health if observation.reachable else "no answer (%s)" % observation.error,
        providers=providers,
        elapsed=round(elapsed, 3),
    )
    if waiting:
        return result, "%s: no fresh KMS Status within %ss; waiting for %s. Last seen: %s" % (
            client.server, timeout, "; ".join(waiting), observation.summary())
    return result, None


def _format_time(value):
    if value is None:
        return "unknown"
    return "%.2f (%s UTC)" % (value, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(value)))
