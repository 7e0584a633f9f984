# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small read-only etcd v3 client over etcd's JSON gateway.

It speaks the v3 gRPC gateway that every etcd 3.x member serves on its client
URL (``POST /v3/kv/range``, ``POST /v3/maintenance/status``, keys and values
base64-encoded in JSON) over mutual TLS, with nothing but the Python standard
library (``ssl`` and ``http.client``).

Why the gateway and not ``etcdctl``:

* nothing has to be installed on the node: kubeadm runs etcd in a static pod,
  and the ``etcdctl`` binary is usually only inside the etcd image;
* no key or value ever appears on a command line, in a process list, or in a
  pipe to a child process: values are read into this process and only ever
  counted and classified by the caller;
* paging is under our control: a large keyspace is read in pages of
  ``page_size`` keys, every page at the revision of the first one, so the
  scan is one consistent snapshot and memory stays bounded by one page
  (``etcdctl get --prefix`` reads the whole range into memory at once).

Endpoints are tried in order; on a connection error (refused, timeout, TLS
handshake failure) or an ``Unavailable`` answer the next one is tried, and the
first that answers is used until it fails.  Errors name the endpoint.

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import os
import socket
import ssl

from ansible.module_utils.basic import env_fallback

DEFAULT_TIMEOUT = 30
DEFAULT_PAGE_SIZE = 500
# etcd answers with a gRPC status code in its JSON errors.
_GRPC_OUT_OF_RANGE = 11
_GRPC_UNAVAILABLE = 14
# socket.timeout is TimeoutError only from Python 3.10 on.
_SocketTimeout = socket.timeout
_RANGE_PATH = "/v3/kv/range"
_STATUS_PATH = "/v3/maintenance/status"
_SNAPSHOT_PATH = "/v3/maintenance/snapshot"
_SNAPSHOT_HASH_SIZE = 32

# Options that go together; pass to AnsibleModule(required_together=...).
ETCD_REQUIRED_TOGETHER = [["etcd_cert", "etcd_key"]]


def etcd_argument_spec():
    """The argument spec of the shared etcd options (doc fragment ``kubecrypt.at_rest.etcd``)."""
    return dict(
        etcd_endpoints=dict(type="list", elements="str", required=True,
                            fallback=(env_fallback, ["ETCDCTL_ENDPOINTS"])),
        etcd_ca_cert=dict(type="path", fallback=(env_fallback, ["ETCDCTL_CACERT"])),
        etcd_cert=dict(type="path", fallback=(env_fallback, ["ETCDCTL_CERT"])),
        etcd_key=dict(type="path", no_log=False, fallback=(env_fallback, ["ETCDCTL_KEY"])),
        etcd_timeout=dict(type="int", default=DEFAULT_TIMEOUT),
    )


def client_from_params(params):
    """An ``EtcdClient`` built from the validated etcd options of a module."""
    return EtcdClient(
        params["etcd_endpoints"],
        ca_cert=params.get("etcd_ca_cert"),
        client_cert=params.get("etcd_cert"),
        client_key=params.get("etcd_key"),
        timeout=params.get("etcd_timeout", DEFAULT_TIMEOUT),
    )


class EtcdError(Exception):
    """etcd could not be read; the message names the endpoint(s) and what failed.

    ``endpoint`` is the endpoint the error is about (the last one tried when
    none answered) and ``attempts`` the ``(endpoint, message)`` of every
    endpoint that was tried.
    """

    def __init__(self, message, endpoint=None, attempts=None):
        super(EtcdError, self).__init__(message)
        self.endpoint = endpoint
        self.attempts = list(attempts or [])


def prefix_range_end(prefix):
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    # Every byte is 0xff (or the prefix is empty): "\0" means "to the end of the keyspace".
    return b"\x00"


class EtcdClient(object):
    """Read raw keys and values from etcd through its v3 JSON gateway.

    ``endpoints`` are URLs like ``https://10.0.0.11:2379`` (an endpoint without a
    scheme is taken as ``https://``); ``ca_cert`` verifies the members'
    certificates (the system store when omitted) and ``client_cert`` plus
    ``client_key`` authenticate this client; ``timeout`` applies to each request.
    """

    def __init__(self, endpoints, ca_cert=None, client_cert=None, client_key=None, timeout=DEFAULT_TIMEOUT):
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self._endpoints = [_Endpoint(url) for url in (e.strip() for e in endpoints or []) if url]
        if not self._endpoints:
            raise EtcdError("no etcd endpoint given (set etcd_endpoints or ETCDCTL_ENDPOINTS)")
        if bool(client_cert) != bool(client_key):
            raise EtcdError("etcd_cert and etcd_key must be given together")
        if not timeout or timeout <= 0:
            raise EtcdError("etcd_timeout must be a positive number of seconds, not %r" % (timeout,))
        self._timeout = timeout
        self._has_client_cert = bool(client_cert)
        self._tls = None
        if any(endpoint.tls for endpoint in self._endpoints):
            self._tls = _tls_context(ca_cert, client_cert, client_key)
        self._current = 0
        self._connection = None

    @property
    def endpoint(self):
        """The URL of the endpoint that answered last (or will be tried first)."""
        return self._endpoints[self._current].url

    def close(self):
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def get(self, key, revision=None):
        """The raw value stored under ``key`` (bytes or str), or ``None`` when there is no such key."""
        request = {"key": _b64(key)}
        if revision:
            request["revision"] = int(revision)
        answer = self._call(_RANGE_PATH, request)
        kvs = answer.get("kvs") or []
        if not kvs:
            return None
        return _unb64(kvs[0].get("value", ""), self.endpoint)

    def range_iter(self, prefix, page_size=DEFAULT_PAGE_SIZE, keys_only=False, revision=None):
        """Iterate ``(key, value)`` (both bytes) over every key starting with ``prefix``, in key order.

        Keys are read ``page_size`` at a time; every page is read at the same
        revision (``revision``, or the current one when the first page is
        read), so the iteration is a consistent snapshot however long it
        takes, unless etcd compacts that revision meanwhile, which fails with
        an ``EtcdError``.  With ``keys_only`` the values are ``b""``.  The
        returned iterator's ``revision`` attribute holds the snapshot revision
        once the first page has been read.
        """
        return _RangeScan(self, _to_bytes(prefix), page_size, keys_only, revision)

    def status(self):
        """Status of the member that answers: endpoint, version, member and leader ids, revision, db size."""
        answer = self._call(_STATUS_PATH, {})
        header = answer.get("header") or {}
        return {
            "endpoint": self.endpoint,
            "version": answer.get("version"),
            "cluster_id": header.get("cluster_id"),
            "member_id": header.get("member_id"),
            "leader": answer.get("leader"),
            "revision": int(header.get("revision", 0)),
            "raft_term": int(header.get("raft_term", 0)),
            "db_size": int(answer.get("dbSize", 0)),
            "db_size_in_use": int(answer.get("dbSizeInUse", 0)),
            "errors": list(answer.get("errors") or []),
        }

    def snapshot(self, handle):
        """Stream a snapshot of the database of the member that answers into ``handle``.

        What is written is what ``etcdctl snapshot save`` writes: the bolt
        database followed by its sha256 (etcd appends it to the stream).  The
        hash is checked; a truncated or corrupted stream raises ``EtcdError``.
        Endpoints are tried in order until one starts streaming; a stream that
        breaks after it started is not retried (the caller's file is partial).
        Returns ``{endpoint, size, sha256}`` (sha256 of the database bytes).
        """
        attempts = []
        count = len(self._endpoints)
        for offset in range(count):
            index = (self._current + offset) % count
            endpoint = self._endpoints[index]
            self.close()
            self._current = index
            try:
                connection = endpoint.connect(self._tls, self._timeout)
                connection.request("POST", endpoint.path + _SNAPSHOT_PATH, body=b"{}",
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, ssl.SSLError):
                    attempts.append((endpoint.url, _describe_tls_error(exc, self._has_client_cert)))
                else:
                    attempts.append((endpoint.url, _describe_connection_error(exc)))
                continue
            try:
                if response.status != 200:
                    answer = _decode_answer(endpoint, response.status, response.read())
                    attempts.append((endpoint.url, str(answer)))
                    continue
                return self._stream_snapshot(endpoint, response, handle)
            finally:
                connection.close()
        raise EtcdError("no etcd endpoint could stream a snapshot: %s"
                        % "; ".join("%s: %s" % attempt for attempt in attempts),
                        endpoint=attempts[-1][0] if attempts else None, attempts=attempts)

    def _stream_snapshot(self, endpoint, response, handle):
        digest = hashlib.sha256()
        tail = b""
        size = 0
        try:
            for line in response:
                line = line.strip()
                if not line:
                    continue
                message = json.loads(line)
                if message.get("error"):
                    raise EtcdError("etcd at %s stopped the snapshot: %s" % (
                        endpoint.url, message["error"].get("message", message["error"])), endpoint=endpoint.url)
                blob = _unb64((message.get("result") or {}).get("blob", ""), endpoint.url)
                handle.write(blob)
                size += len(blob)
                data = tail + blob
                digest.update(data[:-_SNAPSHOT_HASH_SIZE])
                tail = data[-_SNAPSHOT_HASH_SIZE:]
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise EtcdError("the snapshot stream from etcd at %s broke after %d bytes: %s" % (
                endpoint.url, size, exc), endpoint=endpoint.url)
        if size <= _SNAPSHOT_HASH_SIZE or digest.digest() != tail:
            raise EtcdError("the snapshot from etcd at %s is incomplete or corrupt (%d bytes, hash mismatch)" % (
                endpoint.url, size), endpoint=endpoint.url)
        return {"endpoint": endpoint.url, "size": size, "sha256": digest.hexdigest()}

    # -- transport -----------------------------------------------------------

    def _call(self, path, request):
        """POST ``request`` to ``path``, failing over across the endpoints; return the decoded answer."""
        body = json.dumps(request).encode("ascii")
        attempts = []
        count = len(self._endpoints)
        for offset in range(count):
            index = (self._current + offset) % count
            endpoint = self._endpoints[index]
            if index != self._current:
                self.close()
                self._current = index
            try:
                status, payload = self._post(endpoint, path, body)
            except _Unreachable as exc:
                attempts.append((endpoint.url, str(exc)))
                self.close()
                continue
            answer = _decode_answer(endpoint, status, payload)
            if isinstance(answer, _Unreachable):
                attempts.append((endpoint.url, str(answer)))
                self.close()
                continue
            return answer
        if len(attempts) == 1:
            url, message = attempts[0]
            raise EtcdError("etcd at %s: %s" % (url, message), endpoint=url, attempts=attempts)
        raise EtcdError("no etcd endpoint answered: %s" % "; ".join("%s: %s" % attempt for attempt in attempts),
                        endpoint=attempts[-1][0], attempts=attempts)

    def _post(self, endpoint, path, body):
        """One request; a kept-alive connection the server dropped meanwhile is reopened once."""
        reused = self._connection is not None
        while True:
            if self._connection is None:
                self._connection = endpoint.connect(self._tls, self._timeout)
            try:
                self._connection.request("POST", endpoint.path + path, body=body,
                                         headers={"Content-Type": "application/json"})
                response = self._connection.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and not isinstance(exc, (ssl.SSLCertVerificationError, TimeoutError, _SocketTimeout)):
                    reused = False
                    continue
                if isinstance(exc, ssl.SSLError) or (endpoint.tls and isinstance(exc, ConnectionResetError)):
                    raise _Unreachable(_describe_tls_error(exc, self._has_client_cert))
                raise _Unreachable(_describe_connection_error(exc))


class _Unreachable(Exception):
    """An endpoint did not answer (connection, TLS, or Unavailable): try the next one."""


class _Endpoint(object):
    """A parsed endpoint URL."""

    def __init__(self, url):
        original = url
        if "://" not in url:
            url = "https://" + url
        scheme, _sep, rest = url.partition("://")
        scheme = scheme.lower()
        if scheme not in ("https", "http"):
            raise EtcdError("etcd endpoint %s: only https:// and http:// endpoints are supported" % original)
        hostport, _sep, path = rest.partition("/")
        if not hostport:
            raise EtcdError("etcd endpoint %s has no host" % original)
        self.tls = scheme == "https"
        self.path = ("/" + path).rstrip("/") if path else ""
        try:
            self.host, self.port = _split_host_port(hostport, 2379)
        except ValueError:
            raise EtcdError("etcd endpoint %s: the port is not a number" % original)
        host = "[%s]" % self.host if ":" in self.host else self.host
        self.url = "%s://%s:%d%s" % (scheme, host, self.port, self.path)

    def connect(self, tls, timeout):
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


class _RangeScan(object):
    """The iterator ``EtcdClient.range_iter`` returns; see there."""

    def __init__(self, client, prefix, page_size, keys_only, revision):
        if int(page_size) < 1:
            raise ValueError("page_size must be at least 1")
        self._client = client
        self._next_key = prefix
        self._range_end = prefix_range_end(prefix)
        self._page_size = int(page_size)
        self._keys_only = bool(keys_only)
        self.revision = int(revision) if revision else None
        self.pages = 0
        self._page = []
        self._position = 0
        self._more = True

    def __iter__(self):
        return self

    def __next__(self):
        while self._position >= len(self._page):
            if not self._more:
                raise StopIteration
            self._fetch()
        entry = self._page[self._position]
        # Drop the page entry as soon as it is handed out: only one page is ever held.
        self._page[self._position] = None
        self._position += 1
        endpoint = self._client.endpoint
        key = _unb64(entry.get("key", ""), endpoint)
        value = b"" if self._keys_only else _unb64(entry.get("value", ""), endpoint)
        return key, value

    def _fetch(self):
        request = {
            "key": _b64(self._next_key),
            "range_end": _b64(self._range_end),
            "limit": self._page_size,
        }
        if self._keys_only:
            request["keys_only"] = True
        if self.revision:
            request["revision"] = self.revision
        answer = self._client._call(_RANGE_PATH, request)
        if not self.revision:
            self.revision = int((answer.get("header") or {}).get("revision", 0)) or None
        self._page = answer.get("kvs") or []
        self._position = 0
        self.pages += 1
        self._more = bool(answer.get("more")) and bool(self._page)
        if self._page:
            # The smallest key after the last one of this page.
            self._next_key = _unb64(self._page[-1].get("key", ""), self._client.endpoint) + b"\x00"


def _decode_answer(endpoint, status, payload):
    """The JSON answer of a 200, an ``_Unreachable`` for Unavailable, else raise ``EtcdError``."""
    try:
        answer = json.loads(payload.decode("utf-8")) if payload else {}
    except ValueError:
        answer = None
    if status == 200 and isinstance(answer, dict):
        return answer
    if status == 200:
        raise EtcdError("etcd at %s returned an answer that is not JSON; is this an etcd client URL?" % endpoint.url,
                        endpoint=endpoint.url)
    code = answer.get("code") if isinstance(answer, dict) else None
    message = (answer.get("message") or answer.get("error")) if isinstance(answer, dict) else None
    message = message or ("HTTP %d" % status)
    if status == 503 or code == _GRPC_UNAVAILABLE:
        return _Unreachable("unavailable: %s" % message)
    if status == 404:
        raise EtcdError("etcd at %s has no v3 JSON gateway at %s (HTTP 404); is this an etcd 3.x client URL with "
                        "the gRPC gateway enabled?" % (endpoint.url, _RANGE_PATH), endpoint=endpoint.url)
    hint = ""
    if code == _GRPC_OUT_OF_RANGE and "compacted" in message:
        hint = (" (etcd compacted the revision of this scan while it ran; run it again, with a larger page size or "
                "when fewer writes happen)")
    raise EtcdError("etcd at %s refused the request: %s%s" % (endpoint.url, message, hint), endpoint=endpoint.url)


def _tls_context(ca_cert, client_cert, client_key):
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_cert:
        _readable(ca_cert, "etcd_ca_cert")
        try:
            context.load_verify_locations(cafile=ca_cert)
        except (ssl.SSLError, ValueError) as exc:
            raise EtcdError("etcd_ca_cert %s is not a PEM CA certificate: %s" % (ca_cert, exc))
    if client_cert:
        _readable(client_cert, "etcd_cert")
        _readable(client_key, "etcd_key")
        try:
            context.load_cert_chain(certfile=client_cert, keyfile=client_key)
        except ssl.SSLError as exc:
            raise EtcdError("etcd_cert %s and etcd_key %s are not a matching PEM certificate and unencrypted key: %s"
                            % (client_cert, client_key, _ssl_reason(exc)))
    return context


def _readable(path, option):
    if not os.path.isfile(path):
        raise EtcdError("%s %s does not exist or is not a file" % (option, path))
    if not os.access(path, os.R_OK):
        raise EtcdError("%s %s is not readable by this user (use become)" % (option, path))


def _split_host_port(hostport, default_port):
    if hostport.startswith("["):
        host, _sep, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host, port = hostport, ""
    return host, int(port) if port else default_port


def _ssl_reason(exc):
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def _describe_tls_error(exc, has_client_cert):
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("TLS: the server certificate was not accepted (%s); check etcd_ca_cert and that the endpoint's "
                "address is in the certificate" % (getattr(exc, "verify_message", None) or _ssl_reason(exc)))
    reason = str(_ssl_reason(exc))
    rejected = any(alert in reason.upper() for alert in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA"))
    # With TLS 1.3 the server checks the client certificate after the client's handshake is done: a rejection
    # arrives as an alert or, depending on timing, as a bare EOF or reset.
    closed = isinstance(exc, (ssl.SSLEOFError, ConnectionResetError))
    if not has_client_cert and (rejected or closed):
        return ("TLS: etcd closed the connection (%s); it requires a client certificate: set etcd_cert and etcd_key"
                % reason)
    if rejected or closed:
        return ("TLS: etcd %s the client certificate (%s); check etcd_cert and etcd_key (kubeadm: "
                "/etc/kubernetes/pki/apiserver-etcd-client.crt and .key)"
                % ("did not accept" if rejected else "closed the connection; it may not accept", reason))
    return "TLS: %s" % reason


def _describe_connection_error(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, _SocketTimeout)):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return "cannot connect: %s" % text


def _to_bytes(key):
    if isinstance(key, bytes):
        return key
    return key.encode("utf-8")


def _b64(key):
    return base64.b64encode(_to_bytes(key)).decode("ascii")


def _unb64(text, endpoint):
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise EtcdError("etcd at %s returned a key or value that is not base64" % endpoint, endpoint=endpoint)
