"""Unit tests of module_utils/storage_rewrite.py with an in-memory API server."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import storage_rewrite as sr
from ansible_collections.kubecrypt.at_rest.plugins.module_utils.k8s import (
    METADATA, MERGE_PATCH, ApiError, ApiResource, ListPage)


class FakeApi(object):
    """Objects per resource: name -> {"rv": int, "stale": bool}; behaves like the apiserver on a no-op patch."""

    def __init__(self, objects, namespaced=True):
        self.objects = objects
        self.namespaced = namespaced
        self.revision = 1000
        self.lock = threading.Lock()
        self.requests = []
        self.list_calls = []
        self.failures = {}  # name -> list of statuses to answer first
        self.expired = set()
        self.always_expired = set()
        self.list_errors = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False
        self.delay = 0

    def resolve_resource(self, name):
        resource, _sep, group = name.partition(".")
        if name not in self.objects:
            raise ApiError(404, "NotFound", "/api/v1", "GET", "the server has no resource %s" % name)
        verbs = ["list", "patch"] if resource != "readonly" else ["list"]
        return ApiResource(resource, group, "v1", self.namespaced, resource.title(), verbs)

    def list_page(self, path, limit, continue_token=None, accept_metadata_only=True, query=None):
        self.list_calls.append((path, limit, continue_token))
        if continue_token in self.expired or continue_token in self.always_expired:
            # A token expires once: the fresh listing gets a new, valid one.
            self.expired.discard(continue_token)
            raise ApiError(410, "Expired", path, "GET", "The provided continue parameter is too old")
        if (path, continue_token or "") in self.list_errors:
            raise self.list_errors[(path, continue_token or "")]
        resource = path.rsplit("/", 1)[1]
        resource = next(name for name in self.objects if name.split(".")[0] == resource)
        names = sorted(self.objects[resource])
        start = int(continue_token.split(":")[1]) if continue_token else 0
        chosen = names[start:start + limit]
        end = start + len(chosen)
        token = "%s:%d" % (resource, end) if end < len(names) else ""
        items = [{"metadata": {"name": name, "namespace": "ns1" if self.namespaced else None,
                               "resourceVersion": str(self.objects[resource][name]["rv"]),
                               "managedFields": [{"manager": "x" * 100}]}}
                 for name in chosen if self.objects[resource][name] is not None]
        return ListPage(items, token, str(self.revision), None)

    def request(self, method, path, query=None, body=None, content_type=None, accept=None):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.requests.append((method, path, query, body, content_type, accept))
        try:
            if self.delay:
                time.sleep(self.delay)
            parts = path.split("/")
            resource, name = parts[-2], parts[-1]
            resource = next(r for r in self.objects if r.split(".")[0] == resource)
            with self.lock:
                pending = self.failures.get(name)
                if pending:
                    status = pending.pop(0)
                    raise ApiError(status, {409: "Conflict", 429: "TooManyRequests", 500: "InternalError"}.get(
                        status, "Error"), path, method, "failed", retry_after=0.01 if status == 429 else None)
                stored = self.objects[resource].get(name)
                if stored is None:
                    raise ApiError(404, "NotFound", path, method, "not found")
                if stored["stale"] and not (query or {}).get("dryRun"):
                    self.revision += 1
                    stored["rv"] = self.revision
                    stored["stale"] = False
                metadata = {"name": name, "resourceVersion": str(stored["rv"])}
                return 200, {}, {"kind": "PartialObjectMetadata", "metadata": metadata}
        finally:
            with self.lock:
                self.in_flight -= 1

    def close(self):
        self.closed = True


def _objects(count, stale_every=1, prefix="o"):
    return dict(("%s%04d" % (prefix, i), {"rv": 10 + i, "stale": i % stale_every == 0}) for i in range(count))


class Sleeps(object):
    def __init__(self):
        self.calls = []

    def __call__(self, seconds):
        self.calls.append(seconds)


def _rewrite(api, resources=("secrets",), **kwargs):
    kwargs.setdefault("sleep", Sleeps())
    return sr.StorageRewrite(api, list(resources), **kwargs)


# ---------------------------------------------------------------------------
# The continue token


def test_token_round_trip_and_opacity():
    fingerprint = sr.resources_fingerprint(["secrets", "configmaps"], None)
    token = sr.encode_token(1, "eyJ2IjoibWV0YS5rOHMuaW8vdjEi", fingerprint)
    assert "=" not in token and "/" not in token and "+" not in token
    assert sr.decode_token(token, fingerprint, 2) == (1, "eyJ2IjoibWV0YS5rOHMuaW8vdjEi")
    assert sr.decode_token("", fingerprint, 2) == (0, "")
    assert sr.decode_token(None, fingerprint, 2) == (0, "")


def test_token_is_bound_to_resources_and_namespace():
    token = sr.encode_token(0, "x", sr.resources_fingerprint(["secrets"], None))
    with pytest.raises(sr.StorageRewriteError, match="other resources"):
        sr.decode_token(token, sr.resources_fingerprint(["secrets"], "default"), 1)
    with pytest.raises(sr.StorageRewriteError, match="other resources"):
        sr.decode_token(token, sr.resources_fingerprint(["configmaps"], None), 1)


@pytest.mark.parametrize("token", ["not a token", "e30", "eyJ2IjoyfQ", "!!!!"])
def test_token_garbage(token):
    with pytest.raises(sr.StorageRewriteError):
        sr.decode_token(token, "f", 1)


def test_token_version_and_range():
    with pytest.raises(sr.StorageRewriteError, match="version"):
        sr.decode_token(_token({"v": 2, "i": 0, "c": "", "f": "f"}), "f", 1)
    with pytest.raises(sr.StorageRewriteError, match="past the resource list"):
        sr.decode_token(sr.encode_token(3, "", "f"), "f", 2)


def _token(document):
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


# ---------------------------------------------------------------------------
# Runs


def test_one_run_rewrites_stale_objects_only():
    api = FakeApi({"secrets": _objects(25, stale_every=3)})
    result = _rewrite(api, page_size=10).run()
    assert (result["listed"], result["rewritten"], result["unchanged"]) == (25, 9, 16)
    assert result["done"] is True and result["continue_token"] == ""
    assert result["resources_done"] == ["secrets"] and result["changed"] is True
    assert (result["conflicts"], result["gone"], result["errors"], result["would_update"]) == (0, 0, 0, 0)
    assert [call[1] for call in api.list_calls] == [10, 10, 10]
    assert not any(o["stale"] for o in api.objects["secrets"].values())
    again = _rewrite(api, page_size=10).run()
    assert (again["rewritten"], again["unchanged"], again["changed"]) == (0, 25, False)


def test_the_update_is_a_metadata_only_merge_patch_without_precondition():
    api = FakeApi({"secrets": _objects(1)})
    _rewrite(api).run()
    method, path, query, body, content_type, accept = api.requests[0]
    assert (method, path, query, body) == ("PATCH", "/api/v1/namespaces/ns1/secrets/o0000", None, b"{}")
    assert content_type == MERGE_PATCH and accept == METADATA
    assert api.list_calls[0][0] == "/api/v1/secrets"


def test_namespace_and_cluster_scoped_paths():
    api = FakeApi({"secrets": _objects(2)})
    _rewrite(api, namespace="ns1").run()
    assert api.list_calls[0][0] == "/api/v1/namespaces/ns1/secrets"
    cluster = FakeApi({"widgets.example.com": _objects(1)}, namespaced=False)
    _rewrite(cluster, resources=["widgets.example.com"], namespace="ns1").run()
    assert cluster.list_calls[0][0] == "/apis/example.com/v1/widgets"
    assert cluster.requests[0][1] == "/apis/example.com/v1/widgets/o0000"


def test_batches_resume_exactly_where_they_stopped():
    api = FakeApi({"secrets": _objects(7, prefix="s"), "configmaps": _objects(4, prefix="c")})
    token, seen, runs = None, 0, []
    while True:
        result = _rewrite(api, resources=["secrets", "configmaps"], page_size=2, batch_size=3).run(token)
        runs.append((result["listed"], result["done"], result["resources_done"]))
        seen += result["listed"]
        token = result["continue_token"]
        if result["done"]:
            break
        assert token
    assert seen == 11
    assert runs == [(3, False, []), (3, False, []), (3, False, ["secrets"]), (2, True, ["secrets", "configmaps"])]
    patched = [request[1].rsplit("/", 1)[1] for request in api.requests]
    assert len(patched) == len(set(patched)) == 11
    assert all(limit <= 2 for _path, limit, _token in api.list_calls)


def test_batch_ending_on_the_last_page_of_a_resource_moves_to_the_next():
    api = FakeApi({"secrets": _objects(4), "configmaps": _objects(2)})
    result = _rewrite(api, resources=["secrets", "configmaps"], page_size=2, batch_size=4).run()
    assert result["resources_done"] == ["secrets"] and not result["done"]
    assert sr.decode_token(result["continue_token"], sr.resources_fingerprint(["secrets", "configmaps"], None),
                           2) == (1, "")


def test_expired_continue_token_restarts_the_resource_listing():
    api = FakeApi({"secrets": _objects(6)})
    first = _rewrite(api, page_size=2, batch_size=2).run()
    assert first["rewritten"] == 2
    api.expired.add("secrets:2")
    second = _rewrite(api, page_size=2, batch_size=10).run(first["continue_token"])
    assert second["restarted_listings"] == ["secrets"]
    assert (second["listed"], second["rewritten"], second["unchanged"]) == (6, 4, 2)
    assert second["done"]


def test_expired_token_restarts_are_bounded():
    api = FakeApi({"secrets": _objects(6)})
    first = _rewrite(api, page_size=2, batch_size=2).run()
    api.always_expired.update(["secrets:2", "secrets:4"])
    rewrite = _rewrite(api, page_size=2, batch_size=100)
    result = rewrite.run(first["continue_token"])
    assert result["restarted_listings"] == ["secrets"] * sr.MAX_LIST_RESTARTS
    assert rewrite.list_failure.startswith("listing secrets: GET /api/v1/secrets: HTTP 410 Expired")
    assert not result["done"] and result["listed"] == 2 * sr.MAX_LIST_RESTARTS


def test_conflicts_are_retried_then_counted_as_errors():
    api = FakeApi({"secrets": _objects(3)})
    api.failures = {"o0000": [409, 409], "o0001": [409] * 10}
    sleeps = Sleeps()
    result = _rewrite(api, sleep=sleeps, max_retries=3).run()
    assert result["conflicts"] == 2 + 4
    assert (result["rewritten"], result["errors"]) == (2, 1)
    sample = result["error_samples"][0]
    assert sample == {"resource": "secrets", "namespace": "ns1", "name": "o0001", "status": 409, "reason": "Conflict",
                      "message": "failed"}
    assert len(sleeps.calls) == 2 + 3 and max(sleeps.calls) <= 5.0


def test_throttling_honours_retry_after_and_internal_errors_are_not_retried():
    api = FakeApi({"secrets": _objects(2)})
    api.failures = {"o0000": [429], "o0001": [500, 500]}
    sleeps = Sleeps()
    result = _rewrite(api, sleep=sleeps).run()
    assert sleeps.calls == [0.01]
    assert (result["rewritten"], result["errors"]) == (1, 1)
    assert result["error_samples"][0]["reason"] == "InternalError"


def test_deleted_objects_are_gone_not_recreated():
    api = FakeApi({"secrets": _objects(3)})
    original = api.list_page

    def list_then_delete(*args, **kwargs):
        page = original(*args, **kwargs)
        api.objects["secrets"]["o0001"] = None
        return page

    api.list_page = list_then_delete
    result = _rewrite(api).run()
    assert (result["gone"], result["rewritten"], result["errors"]) == (1, 2, 0)
    assert api.objects["secrets"]["o0001"] is None


def test_error_samples_are_bounded():
    api = FakeApi({"secrets": _objects(50)})
    api.failures = dict(("o%04d" % i, [500]) for i in range(50))
    result = _rewrite(api, page_size=7).run()
    assert result["errors"] == 50 and len(result["error_samples"]) == sr.ERROR_SAMPLE_SIZE


def test_check_mode_is_a_dry_run():
    api = FakeApi({"secrets": _objects(5, stale_every=2)})
    result = _rewrite(api, dry_run=True).run()
    assert (result["would_update"], result["rewritten"], result["unchanged"]) == (5, 0, 0)
    assert result["changed"] is True
    assert all(request[2] == {"dryRun": "All"} for request in api.requests)
    assert [o["stale"] for o in api.objects["secrets"].values()] == [True, False, True, False, True]


def test_concurrency_is_bounded():
    api = FakeApi({"secrets": _objects(40)})
    api.delay = 0.01
    result = _rewrite(api, concurrency=3, page_size=20).run()
    assert result["listed"] == 40 and 1 < api.max_in_flight <= 3


def test_listing_failure_reports_what_was_done_and_resumes_there():
    api = FakeApi({"secrets": _objects(6)})
    api.list_errors[("/api/v1/secrets", "secrets:2")] = ApiError(503, "ServiceUnavailable", "/api/v1/secrets", "GET")
    rewrite = _rewrite(api, page_size=2)
    result = rewrite.run()
    assert result["listed"] == 2 and not result["done"]
    assert rewrite.list_failure.startswith("listing secrets: GET /api/v1/secrets: HTTP 503")
    del api.list_errors[("/api/v1/secrets", "secrets:2")]
    rest = _rewrite(api, page_size=2).run(result["continue_token"])
    assert rest["listed"] == 4 and rest["done"]


def test_unknown_resources_and_missing_verbs_fail_before_any_write():
    api = FakeApi({"secrets": _objects(1), "readonly": _objects(1)})
    with pytest.raises(sr.StorageRewriteError, match="no such resource"):
        _rewrite(api, resources=["secrets", "nonexistent"]).run()
    with pytest.raises(sr.StorageRewriteError, match="does not support patch"):
        _rewrite(api, resources=["readonly"]).run()
    assert api.requests == []


@pytest.mark.parametrize("option, value", [("page_size", 0), ("batch_size", 0), ("concurrency", 0),
                                           ("rate_limit", -1)])
def test_option_bounds(option, value):
    with pytest.raises(sr.StorageRewriteError, match=option):
        _rewrite(FakeApi({"secrets": {}}), **{option: value})
    with pytest.raises(sr.StorageRewriteError, match="at least one"):
        sr.StorageRewrite(FakeApi({}), [])


def test_rate_limiter_spaces_updates():
    now = [100.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    limiter = sr.RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    for _attempt in range(5):
        limiter.acquire()
    assert sleeps == [0.25, 0.25, 0.25, 0.25]
    unlimited = sr.RateLimiter(0, clock=lambda: now[0], sleep=sleep)
    unlimited.acquire()
    assert len(sleeps) == 4


def test_outcome_of_update():
    assert sr.outcome_of_update("5", {"metadata": {"resourceVersion": "5"}}, False) == "unchanged"
    assert sr.outcome_of_update("5", {"metadata": {"resourceVersion": "9"}}, False) == "rewritten"
    assert sr.outcome_of_update("5", {"metadata": {"resourceVersion": "5"}}, True) == "would_update"


def test_run_module_fails_with_counts_on_errors():
    api = FakeApi({"secrets": _objects(3)})
    api.failures = {"o0002": [500]}
    params = dict(resources=["secrets"], namespace=None, page_size=500, batch_size=2000, continue_token=None,
                  concurrency=2, rate_limit=0)
    result, failure = sr.run_module(params, False, lambda p: api)
    assert api.closed
    assert failure.startswith("1 object(s) could not be updated (first: secrets ns1/o0002: HTTP 500 InternalError")
    assert result["rewritten"] == 2 and result["errors"] == 1
    api.failures = {}
    result, failure = sr.run_module(params, False, lambda p: api)
    assert failure is None and result["unchanged"] == 2 and result["rewritten"] == 1
