# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Rewrite stale stored objects through the API, in resumable batches.

kube-apiserver only writes an unchanged object back to etcd when the stored
form is stale, that is when it was read with a provider or key that is not
the first (write) one of the encryption configuration.  So a no-op update of
every object rewrites exactly the stale ones, and running it again is cheap.

How (verified on kube-apiserver v1.37):

* objects are listed in pages of metadata only (``PartialObjectMetadataList``):
  no secret data is read, and memory is bounded by one page;
* each object gets a JSON merge patch ``{}`` without a resourceVersion
  precondition: no conflict storm, and a deleted object is not resurrected
  (the patch answers 404).  The answer is requested as ``PartialObjectMetadata``
  too.  A stale object comes back with a new resourceVersion and its etcd value
  carries the write provider's prefix; a current object keeps its
  resourceVersion;
* a server-side dry run (``dryRun=All``) keeps the resourceVersion even of a
  stale object, so in check mode the API cannot tell stale from current:
  ``would_update`` counts every object the server would accept the update of.

A run handles at most ``batch_size`` objects and returns a continue token that
carries the resource index and the API continue token; a token the API has
expired (410) restarts that resource's listing from the start, which is safe
because the update of an object that is already current is a no-op.

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time

from concurrent.futures import ThreadPoolExecutor

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import METADATA, MERGE_PATCH, ApiError

TOKEN_VERSION = 1
MAX_RETRIES = 3
MAX_LIST_RESTARTS = 3
ERROR_SAMPLE_SIZE = 20
_RETRYABLE_STATUSES = (429, 503, 504)
_BACKOFF_START = 0.2
_BACKOFF_MAX = 5.0
_OUTCOMES = ("rewritten", "unchanged", "would_update", "gone", "error")


class StorageRewriteError(Exception):
    """The options or the continue token cannot be used; nothing was written."""


# ---------------------------------------------------------------------------
# The continue token
# ---------------------------------------------------------------------------

def resources_fingerprint(resources, namespace):
    """A short digest of what a token is about: the resource list and the namespace."""
    text = json.dumps([list(resources), namespace or ""], separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def encode_token(resource_index, api_continue, fingerprint):
    """The opaque continue token: base64url of a small JSON document (version, index, API token, fingerprint)."""
    document = {"v": TOKEN_VERSION, "i": int(resource_index), "c": api_continue or "", "f": fingerprint}
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def decode_token(token, fingerprint, resource_count):
    """``(resource index, API continue token)`` of ``token`` ('' or None: from the start)."""
    if not token:
        return 0, ""
    try:
        padded = token + "=" * (-len(token) % 4)
        document = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8"))
        version, index, api_continue, token_fingerprint = (
            document["v"], int(document["i"]), document["c"], document["f"])
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeError, AttributeError):
        raise StorageRewriteError("continue_token is not a continue token returned by this module")
    if version != TOKEN_VERSION:
        raise StorageRewriteError("continue_token has version %s; this module reads version %d" % (
            version, TOKEN_VERSION))
    if token_fingerprint != fingerprint:
        raise StorageRewriteError("continue_token was returned for other resources or another namespace; pass the "
                                  "same resources and namespace as the run that returned it, or no token to start "
                                  "over")
    if not 0 <= index <= resource_count:
        raise StorageRewriteError("continue_token points past the resource list")
    return index, api_continue or ""


# ---------------------------------------------------------------------------
# Counting and pacing
# ---------------------------------------------------------------------------

class RewriteCounts(object):
    """The tally of one run.  Only the thread that collects results updates it."""

    def __init__(self, sample_size=ERROR_SAMPLE_SIZE):
        self.listed = 0
        self.rewritten = 0
        self.unchanged = 0
        self.would_update = 0
        self.conflicts = 0
        self.gone = 0
        self.errors = 0
        self.error_samples = []
        self._sample_size = sample_size

    def add(self, outcome):
        """Count one ``_Outcome``."""
        self.conflicts += outcome.conflicts
        if outcome.kind == "error":
            self.errors += 1
            if len(self.error_samples) < self._sample_size:
                self.error_samples.append(outcome.error)
        else:
            setattr(self, outcome.kind, getattr(self, outcome.kind) + 1)

    def as_dict(self):
        return dict(listed=self.listed, rewritten=self.rewritten, unchanged=self.unchanged,
                    would_update=self.would_update, conflicts=self.conflicts, gone=self.gone, errors=self.errors,
                    error_samples=list(self.error_samples))


class RateLimiter(object):
    """At most ``rate`` acquisitions per second across threads (0: unlimited)."""

    def __init__(self, rate, clock=time.monotonic, sleep=time.sleep):
        self._interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = None
        self._lock = threading.Lock()

    def acquire(self):
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            slot = now if self._next is None or self._next < now else self._next
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


class _Outcome(object):
    __slots__ = ("kind", "conflicts", "error")

    def __init__(self, kind, conflicts=0, error=None):
        self.kind = kind
        self.conflicts = conflicts
        self.error = error


def outcome_of_update(listed_resource_version, answer, dry_run):
    """``rewritten``, ``unchanged`` or ``would_update`` from the update's answer.

    The apiserver writes an unchanged object only when its stored form is
    stale, and a write gives a new resourceVersion.
    """
    if dry_run:
        return "would_update"
    metadata = (answer.get("metadata") or {}) if isinstance(answer, dict) else {}
    new_version = metadata.get("resourceVersion")
    if new_version and listed_resource_version and new_version == listed_resource_version:
        return "unchanged"
    return "rewritten"


# ---------------------------------------------------------------------------
# The rewrite
# ---------------------------------------------------------------------------

class StorageRewrite(object):
    """Rewrite the objects of ``resources`` (names like ``secrets`` or ``deployments.apps``).

    ``client`` is a ``k8s.ApiClient``.  ``run(continue_token)`` handles at most
    ``batch_size`` objects and returns the result dictionary of the module.
    """

    def __init__(self, client, resources, namespace=None, page_size=500, batch_size=2000, concurrency=8,
                 rate_limit=0, dry_run=False, max_retries=MAX_RETRIES, clock=time.monotonic, sleep=time.sleep):
        if not resources:
            raise StorageRewriteError("resources must name at least one resource")
        for name, value, minimum in (("page_size", page_size, 1), ("batch_size", batch_size, 1),
                                     ("concurrency", concurrency, 1), ("rate_limit", rate_limit, 0)):
            if value is None or value < minimum:
                raise StorageRewriteError("%s must be at least %d" % (name, minimum))
        self.client = client
        self.resource_names = [str(name).strip() for name in resources]
        self.namespace = namespace or None
        self.page_size = int(page_size)
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency)
        self.dry_run = dry_run
        self.max_retries = int(max_retries)
        self._clock = clock
        self._sleep = sleep
        self._limiter = RateLimiter(rate_limit, clock, sleep)
        self.fingerprint = resources_fingerprint(self.resource_names, self.namespace)
        self.list_failure = None

    def _resolve(self):
        resolved = []
        for name in self.resource_names:
            try:
                resource = self.client.resolve_resource(name)
            except ApiError as exc:
                if exc.status == 404:
                    raise StorageRewriteError("resource %s: the server has no such resource (use the plural name, "
                                              "with the API group for resources outside the core group, like "
                                              "deployments.apps)" % name)
                raise
            missing = [verb for verb in ("list", "patch") if verb not in resource.verbs]
            if missing:
                raise StorageRewriteError("resource %s does not support %s" % (name, " and ".join(missing)))
            resolved.append(resource)
        return resolved

    def run(self, continue_token=None):
        started = self._clock()
        index, api_continue = decode_token(continue_token, self.fingerprint, len(self.resource_names))
        resources = self._resolve()
        counts = RewriteCounts()
        restarted = []
        budget = self.batch_size
        list_restarts = 0
        executor = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            while index < len(resources) and budget > 0:
                resource = resources[index]
                try:
                    page = self.client.list_page(resource.collection_path(self.namespace),
                                                 min(self.page_size, budget), api_continue)
                except ApiError as exc:
                    if exc.status != 410 or not api_continue or list_restarts >= MAX_LIST_RESTARTS:
                        # Stop here; what was done is reported, and the token resumes at this page.
                        self.list_failure = "listing %s: %s" % (resource.qualified_name, exc)
                        break
                    # The API expired the continue token: list this resource again from the start.
                    list_restarts += 1
                    restarted.append(resource.qualified_name)
                    api_continue = ""
                    continue
                targets = [_target(item) for item in page.items]
                page.items = None
                counts.listed += len(targets)
                budget -= len(targets)
                for outcome in executor.map(lambda target: self._update(resource, target), targets):
                    counts.add(outcome)
                api_continue = page.continue_token
                if not api_continue:
                    index += 1
        finally:
            executor.shutdown(wait=True)
        elapsed = self._clock() - started
        done = index >= len(resources)
        result = counts.as_dict()
        result.update(
            continue_token="" if done else encode_token(index, api_continue, self.fingerprint),
            done=done,
            resources_done=self.resource_names[:index],
            restarted_listings=restarted,
            elapsed=round(elapsed, 3),
            rate=round(counts.listed / elapsed, 1) if elapsed > 0 else 0.0,
            changed=(counts.would_update if self.dry_run else counts.rewritten) > 0,
        )
        return result

    def _update(self, resource, target):
        """The no-op update of one object; returns an ``_Outcome``.  Never raises."""
        namespace, name, listed_version = target
        path = resource.object_path(name, namespace)
        query = {"dryRun": "All"} if self.dry_run else None
        conflicts = 0
        delay = _BACKOFF_START
        attempt = 0
        while True:
            self._limiter.acquire()
            try:
                _status, _headers, answer = self.client.request(
                    "PATCH", path, query=query, body=b"{}", content_type=MERGE_PATCH, accept=METADATA)
            except ApiError as exc:
                if exc.status == 404:
                    return _Outcome("gone", conflicts)
                conflict = exc.status == 409
                conflicts += 1 if conflict else 0
                retryable = conflict or exc.status in _RETRYABLE_STATUSES or exc.status is None
                if not retryable or attempt >= self.max_retries:
                    return _Outcome("error", conflicts, dict(
                        resource=resource.qualified_name, namespace=namespace, name=name, status=exc.status,
                        reason=exc.reason, message=exc.message))
                attempt += 1
                self._sleep(min(_BACKOFF_MAX, exc.retry_after or delay))
                delay = min(_BACKOFF_MAX, delay * 2)
                continue
            return _Outcome(outcome_of_update(listed_version, answer, self.dry_run), conflicts)


def _target(item):
    """``(namespace, name, resourceVersion)`` of a listed item; the rest of it is dropped."""
    metadata = item.get("metadata") or {}
    return metadata.get("namespace"), metadata.get("name"), metadata.get("resourceVersion")


# ---------------------------------------------------------------------------
# Module glue
# ---------------------------------------------------------------------------

def argument_spec():
    """The options of the ``storage_rewrite`` module besides the k8s auth ones."""
    return dict(
        resources=dict(type="list", elements="str", default=["secrets"]),
        namespace=dict(type="str"),
        page_size=dict(type="int", default=500),
        batch_size=dict(type="int", default=2000),
        continue_token=dict(type="str", no_log=False),
        concurrency=dict(type="int", default=8),
        rate_limit=dict(type="float", default=0),
    )


def run_module(params, check_mode, client_factory):
    """``(result, failure message or None)`` for the module's parameters."""
    client = client_factory(params)
    try:
        rewrite = StorageRewrite(client, params["resources"], namespace=params.get("namespace"),
                                 page_size=params["page_size"], batch_size=params["batch_size"],
                                 concurrency=params["concurrency"], rate_limit=params["rate_limit"],
                                 dry_run=check_mode)
        result = rewrite.run(params.get("continue_token"))
    finally:
        client.close()
    problems = []
    if rewrite.list_failure:
        problems.append(rewrite.list_failure)
    if result["errors"]:
        problems.append("%d object(s) could not be updated (first: %s)" % (
            result["errors"], _describe_error(result["error_samples"][0])))
    if problems:
        return result, "%s; the counts cover what was done, and continue_token resumes after it" % "; ".join(problems)
    return result, None


def _describe_error(sample):
    where = "%s/%s" % (sample["namespace"], sample["name"]) if sample.get("namespace") else sample["name"]
    text = "%s %s: HTTP %s %s" % (sample["resource"], where, sample["status"], sample["reason"])
    if sample.get("message"):
        text += ": %s" % sample["message"]
    return text
