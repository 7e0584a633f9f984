"""Continuous Secret traffic through the lab's load balancer, every request accounted for.

    python tests/integration/traffic.py --duration 60 [--namespace kc-traffic] [--workers 4]

Each worker thread loops over four operations, each request on a fresh HTTPS
connection through the load balancer (so that every request is routed anew,
as a client behind a load balancer sees a rolling restart), authenticated with
the lab's admin client certificate:

* read one of the pool Secrets that existed before the traffic started, and
  compare its data with what it was;
* create a Secret of its own;
* update (JSON merge patch, no precondition) one of its own Secrets with the
  next value;
* read one of its own Secrets and compare with the last value it wrote.

Each Secret of a worker is written by that worker only, so "the last
acknowledged value" is well defined.  Outcomes are counted per operation:

``ok``
    answered and (for reads) with the expected data;
``retried``
    the request failed in a way a client can see and retry -- no answer
    (connection refused, reset, closed, timed out) or 429/503 (the apiserver
    is shutting down or overloaded) -- and was retried; for a write the first
    attempt may or may not have landed, and the retry settles it (a create
    retried into 409 AlreadyExists had landed);
``failed``
    an answer that must not happen to this traffic (a read of an existing
    Secret answered with an error such as 500 "failed to decrypt" or 404, a
    write refused with anything but the above), or a read whose data differ
    from the last acknowledged write, or an operation that still failed after
    its retries.

``verify()`` reads every Secret the traffic created or updated from every
apiserver directly and counts acknowledged writes that are missing or hold
another value ("lost").  Nothing here prints Secret data.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import random
import ssl
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from labctl import LB, NODES, create_secrets, ensure_namespace, lab_path  # noqa: E402

PORT = 6443
POOL_PREFIX = "pool"
REQUEST_TIMEOUT = 15
RETRY_FOR = 60.0
RETRY_SLEEP = 0.25
ERROR_SAMPLE = 20
OPERATIONS = ("read_existing", "create", "update", "read_own")
WEIGHTS = (50, 5, 25, 20)
RETRYABLE_STATUSES = (429, 503)


class RetryableError(Exception):
    """No usable answer: the client may retry (the request may or may not have been applied)."""


def _encode(text):
    return base64.b64encode(text.encode()).decode()


class Client(object):
    """One request per connection to ``host``:6443 with the lab's admin certificate."""

    def __init__(self, host):
        self.host = host
        self.context = ssl.create_default_context(cafile=lab_path("pki", "ca.crt"))
        self.context.load_cert_chain(lab_path("pki", "admin.crt"), lab_path("pki", "admin.key"))

    def request(self, method, path, body=None, content_type="application/json"):
        """(status, decoded JSON or None); RetryableError when there is no answer."""
        connection = http.client.HTTPSConnection(self.host, PORT, context=self.context, timeout=REQUEST_TIMEOUT)
        headers = {"Accept": "application/json", "Connection": "close", "User-Agent": "kubecrypt-lab-traffic"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException, ssl.SSLError) as error:
            raise RetryableError("%s: %s" % (type(error).__name__, error))
        finally:
            connection.close()
        try:
            document = json.loads(data) if data else None
        except ValueError:
            document = None
        return response.status, document


def _reason(status, document):
    if isinstance(document, dict):
        return "%d %s: %s" % (status, document.get("reason", ""), str(document.get("message", ""))[:160])
    return "%d" % status


class Tally(object):
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {op: collections.Counter() for op in OPERATIONS}
        self.retry_reasons = collections.Counter()
        self.failure_samples = []
        self.retry_times = []

    def add(self, operation, outcome, count=1):
        with self.lock:
            self.counts[operation][outcome] += count

    def retry(self, operation, reason, elapsed):
        with self.lock:
            self.counts[operation]["retried_errors"] += 1
            self.retry_reasons["%s: %s" % (operation, reason.split(":")[0])] += 1
            self.retry_times.append(round(elapsed, 1))

    def fail(self, operation, detail):
        with self.lock:
            self.counts[operation]["failed"] += 1
            if len(self.failure_samples) < ERROR_SAMPLE:
                self.failure_samples.append("%s: %s" % (operation, detail))


class Traffic(object):
    """Creates, updates and reads Secrets in ``namespace`` until ``stop()``."""

    def __init__(self, namespace="kc-traffic", workers=4, pool_size=200, pause=0.02, host=LB, seed=None):
        self.namespace = namespace
        self.workers = workers
        self.pool_size = pool_size
        self.pause = pause
        self.client = Client(host)
        self.run_id = uuid.uuid4().hex[:6]
        self.random = random.Random(seed)
        self.tally = Tally()
        self.pool = {}
        self.owned = {}          # name -> last acknowledged value
        self.unsettled = {}      # name -> values a write that gave up may have left
        self.stopping = threading.Event()
        self.threads = []
        self.started = None
        self.stopped = None

    # -- setup ----------------------------------------------------------------

    def prepare(self):
        """Create the pool Secrets once (names pool-NNNNN) and remember their data."""
        ensure_namespace(self.namespace)
        document = self._get_list()
        pool = {item["metadata"]["name"]: item.get("data") or {}
                for item in document.get("items", []) if item["metadata"]["name"].startswith(POOL_PREFIX + "-")}
        if not pool:
            create_secrets(self.pool_size, namespace=self.namespace, prefix=POOL_PREFIX)
            document = self._get_list()
            pool = {item["metadata"]["name"]: item.get("data") or {}
                    for item in document.get("items", []) if item["metadata"]["name"].startswith(POOL_PREFIX + "-")}
        assert len(pool) >= self.pool_size, "the pool holds %d Secrets, not %d" % (len(pool), self.pool_size)
        self.pool = pool

    def _get_list(self):
        for _attempt in range(20):
            try:
                status, document = self.client.request("GET", "/api/v1/namespaces/%s/secrets" % self.namespace)
            except RetryableError:
                time.sleep(1)
                continue
            if status == 200:
                return document
            time.sleep(1)
        raise AssertionError("cannot list the Secrets of %s" % self.namespace)

    # -- running ----------------------------------------------------------------

    def start(self):
        if not self.pool:
            self.prepare()
        self.started = time.monotonic()
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, args=(index, random.Random(self.random.random())),
                                      name="traffic-%d" % index, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=RETRY_FOR + REQUEST_TIMEOUT + 10)
        self.stopped = time.monotonic()

    def _work(self, index, rng):
        mine = []
        counter = 0
        pool_names = sorted(self.pool)
        while not self.stopping.is_set():
            operation = rng.choices(OPERATIONS, WEIGHTS)[0]
            if operation in ("update", "read_own") and not mine:
                operation = "create"
            if operation == "read_existing":
                self._read(operation, rng.choice(pool_names), self.pool)
            elif operation == "create":
                counter += 1
                name = "t-%s-w%d-%05d" % (self.run_id, index, counter)
                if self._create(name):
                    mine.append(name)
            elif operation == "update":
                self._update(rng.choice(mine))
            else:
                name = rng.choice(mine)
                self._read(operation, name, {name: {"value": _encode(self.owned[name])}}, allowed=self.unsettled)
            time.sleep(self.pause)

    def _path(self, name=None):
        path = "/api/v1/namespaces/%s/secrets" % self.namespace
        return path + "/" + name if name else path

    def _call(self, operation, method, path, body=None, content_type="application/json"):
        """Send until there is an answer that is not 429/503, counting each retry.

        Returns ``(status, document, retried)``, or None when still no answer after RETRY_FOR seconds.
        """
        deadline = time.monotonic() + RETRY_FOR
        retried = False
        while True:
            try:
                status, document = self.client.request(method, path, body, content_type)
                if status not in RETRYABLE_STATUSES:
                    return status, document, retried
                reason = _reason(status, document)
            except RetryableError as error:
                reason = str(error)
            self.tally.retry(operation, reason, time.monotonic() - self.started)
            retried = True
            if time.monotonic() > deadline:
                return None
            time.sleep(RETRY_SLEEP)

    def _read(self, operation, name, expected, allowed=None):
        answer = self._call(operation, "GET", self._path(name))
        if answer is None:
            self.tally.fail(operation, "%s: no answer within %ds" % (name, RETRY_FOR))
            return
        status, document, _retried = answer
        if status != 200:
            self.tally.fail(operation, "%s: %s" % (name, _reason(status, document)))
            return
        data = (document or {}).get("data") or {}
        if data != expected[name]:
            possible = [{"value": _encode(value)} for value in (allowed or {}).get(name, ())]
            if data not in possible:
                self.tally.fail(operation, "%s: the data differ from the last acknowledged write" % name)
                return
        self.tally.add(operation, "ok")

    def _create(self, name):
        value = "%s-v0" % name
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": self.namespace}, "data": {"value": _encode(value)}}
        answer = self._call("create", "POST", self._path(), body)
        if answer is None:
            self.tally.fail("create", "%s: no answer within %ds" % (name, RETRY_FOR))
            self.unsettled[name] = (value,)
            return False
        status, document, retried = answer
        if status == 201 or (status == 409 and retried):
            # 409 after a retry: the first attempt landed before its answer was lost.
            self.owned[name] = value
            self.tally.add("create", "ok")
            if status == 409:
                self.tally.add("create", "landed_before_retry")
            return True
        self.tally.fail("create", "%s: %s" % (name, _reason(status, document)))
        return False

    def _update(self, name):
        version = int(self.owned[name].rsplit("-v", 1)[1]) + 1
        value = "%s-v%d" % (name, version)
        answer = self._call("update", "PATCH", self._path(name), {"data": {"value": _encode(value)}},
                            "application/merge-patch+json")
        if answer is None:
            self.tally.fail("update", "%s: no answer within %ds" % (name, RETRY_FOR))
            self.unsettled[name] = self.unsettled.get(name, ()) + (value,)
            return
        status, document, _retried = answer
        if status == 200:
            self.owned[name] = value
            self.unsettled.pop(name, None)
            self.tally.add("update", "ok")
        else:
            self.tally.fail("update", "%s: %s" % (name, _reason(status, document)))

    # -- results ----------------------------------------------------------------

    def verify(self):
        """Read every Secret the traffic wrote from every apiserver: count missing and wrong values."""
        result = {"checked": len(self.owned), "lost": 0, "lost_sample": [], "unsettled": len(self.unsettled)}
        for node, ip in sorted(NODES.items()):
            client = Client(ip)
            status, document = None, None
            for _attempt in range(30):
                try:
                    status, document = client.request("GET", self._path())
                    if status == 200:
                        break
                except RetryableError:
                    pass
                time.sleep(1)
            assert status == 200, "%s: cannot list %s" % (node, self.namespace)
            served = {item["metadata"]["name"]: item.get("data") or {} for item in document.get("items", [])}
            for name, value in sorted(self.owned.items()):
                possible = [{"value": _encode(other)} for other in (value,) + self.unsettled.get(name, ())]
                if served.get(name) not in possible:
                    self._lost(result, "%s on %s: %s" % (
                        name, node, "missing" if name not in served else "another value"))
            for name, data in sorted(self.pool.items()):
                if served.get(name) != data:
                    self._lost(result, "pool %s on %s: %s" % (
                        name, node, "missing" if name not in served else "changed"))
        return result

    @staticmethod
    def _lost(result, what):
        result["lost"] += 1
        if len(result["lost_sample"]) < ERROR_SAMPLE:
            result["lost_sample"].append(what)

    def report(self):
        counts = {op: dict(counter) for op, counter in self.tally.counts.items()}
        elapsed = (self.stopped or time.monotonic()) - (self.started or time.monotonic())
        total = sum(counter["ok"] + counter["failed"] for counter in self.tally.counts.values())
        return {
            "seconds": round(elapsed, 1),
            "operations": total,
            "per_second": round(total / elapsed, 1) if elapsed else 0,
            "counts": counts,
            "retry_reasons": dict(self.tally.retry_reasons),
            "retry_times_s": self.tally.retry_times[:200],
            "failures": self.tally.failure_samples,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--namespace", default="kc-traffic")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    traffic = Traffic(args.namespace, args.workers)
    traffic.start()
    try:
        time.sleep(args.duration)
    except KeyboardInterrupt:
        pass
    traffic.stop()
    report = traffic.report()
    report["verify"] = traffic.verify()
    print(json.dumps(report, indent=1, sort_keys=True))
    failed = sum(counter["failed"] for counter in traffic.tally.counts.values())
    return 0 if not failed and not report["verify"]["lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
