# -*- coding: utf-8 -*-
# Copyright: kubecrypt.at_rest contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small Kubernetes API client, standard library only.

It reads a kubeconfig (certificate, key and CA as paths or ``-data``, bearer
tokens), lets the module options override any part of it (``host`` to talk to
ONE control-plane node's own apiserver instead of the load balancer), keeps
one keep-alive HTTPS connection per thread, and offers what this collection
needs: plain requests, raw GETs (``/readyz``, ``/metrics``, ``/version``) with
an optional line filter, paginated lists (``limit``/``continue``) as
``PartialObjectMetadataList`` and resource discovery.

Errors are ``ApiError`` with the HTTP status, the Kubernetes ``reason``, the
method and the URL path; request bodies are never part of an error (they may
carry secret data).

Private helpers are ``_``-prefixed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import traceback

from urllib.parse import quote, urlencode, urlsplit

try:
    import yaml
except ImportError:
    HAS_YAML = False
    YAML_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_YAML = True
    YAML_IMPORT_ERROR = None

from ansible.module_utils.basic import env_fallback

USER_AGENT = "kubecrypt.at_rest"
DEFAULT_TIMEOUT = 30
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
# Ask for metadata only; fall back to the full object when a resource cannot
# be served as PartialObjectMetadata (the server picks the first it can serve).
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
_MESSAGE_LIMIT = 300
_STREAM_CHUNK = 65536
_STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError,
                            ConnectionResetError, ConnectionAbortedError)


def k8s_auth_argument_spec():
    """The shared API auth options (doc fragment ``kubecrypt.at_rest.k8s_auth``)."""
    return dict(
        kubeconfig=dict(type="path", fallback=(env_fallback, ["K8S_AUTH_KUBECONFIG"])),
        context=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_CONTEXT"])),
        host=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_HOST"])),
        ca_cert=dict(type="path", aliases=["ssl_ca_cert"], fallback=(env_fallback, ["K8S_AUTH_SSL_CA_CERT"])),
        client_cert=dict(type="path", aliases=["cert_file"], fallback=(env_fallback, ["K8S_AUTH_CERT_FILE"])),
        client_key=dict(type="path", aliases=["key_file"], no_log=False,
                        fallback=(env_fallback, ["K8S_AUTH_KEY_FILE"])),
        validate_certs=dict(type="bool", default=True, aliases=["verify_ssl"],
                            fallback=(env_fallback, ["K8S_AUTH_VERIFY_SSL"])),
        api_key=dict(type="str", no_log=True, fallback=(env_fallback, ["K8S_AUTH_API_KEY"])),
    )


def wait_argument_spec():
    """The shared wait options (doc fragment ``kubecrypt.at_rest.wait``)."""
    return dict(
        wait_timeout=dict(type="int", default=300),
        wait_sleep=dict(type="float", default=2),
    )


class ApiError(Exception):
    """A request failed.

    ``status`` is the HTTP status (``None`` when there was no answer),
    ``reason`` the Kubernetes ``Status.reason`` (or the HTTP reason phrase, or
    the kind of connection error), ``path`` the URL path without the query,
    ``method`` the HTTP method and ``message`` the server's ``Status.message``
    (shortened).  Request bodies are never included.
    """

    def __init__(self, status, reason, path, method="GET", message=None, retry_after=None):
        self.status = status
        self.reason = reason or ""
        self.path = path
        self.method = method
        self.message = _shorten(message) if message else ""
        self.retry_after = retry_after
        text = "%s %s: " % (method, path)
        text += ("HTTP %d %s" % (status, self.reason)) if status else self.reason
        if self.message:
            text += ": %s" % self.message
        super(ApiError, self).__init__(text)

    def to_dict(self):
        return dict(status=self.status, reason=self.reason, path=self.path, method=self.method,
                    message=self.message)


class ConfigError(Exception):
    """The auth options or the kubeconfig do not describe a usable connection."""


class ApiResource(object):
    """A resource found through discovery: where to list it and how to address one object."""

    def __init__(self, name, group, version, namespaced, kind, verbs):
        self.name = name
        self.group = group
        self.version = version
        self.namespaced = namespaced
        self.kind = kind
        self.verbs = list(verbs or [])

    @property
    def group_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def qualified_name(self):
        """``secrets``, ``deployments.apps``: the name a user writes."""
        return "%s.%s" % (self.name, self.group) if self.group else self.name

    def _base(self):
        return ("/apis/%s" % self.group_version) if self.group else ("/api/%s" % self.version)

    def collection_path(self, namespace=None):
        """The list path, across all namespaces when ``namespace`` is empty (or not namespaced)."""
        if self.namespaced and namespace:
            return "%s/namespaces/%s/%s" % (self._base(), _segment(namespace), self.name)
        return "%s/%s" % (self._base(), self.name)

    def object_path(self, name, namespace=None):
        if self.namespaced:
            return "%s/namespaces/%s/%s/%s" % (self._base(), _segment(namespace or ""), self.name, _segment(name))
        return "%s/%s/%s" % (self._base(), self.name, _segment(name))


class ListPage(object):
    """One page of a list: ``items``, the ``continue_token`` for the next page ('' at the end)."""

    def __init__(self, items, continue_token, resource_version, remaining):
        self.items = items
        self.continue_token = continue_token or ""
        self.resource_version = resource_version
        self.remaining = remaining


class ApiClient(object):
    """Talk to one apiserver endpoint.

    Build it with ``ApiClient.from_module_params(params)``.  Each thread gets
    its own keep-alive connection; ``close()`` closes all of them.
    """

    def __init__(self, server, ca_file=None, ca_data=None, cert_file=None, key_file=None, cert_data=None,
                 key_data=None, token=None, verify=True, tls_server_name=None, timeout=DEFAULT_TIMEOUT):
        parts = urlsplit(server if "://" in server else "https://" + server)
        if parts.scheme not in ("https", "http"):
            raise ConfigError("host %s: only https:// and http:// are supported" % server)
        if not parts.hostname:
            raise ConfigError("host %s has no host name" % server)
        self.server = "%s://%s" % (parts.scheme, parts.netloc)
        self._scheme = parts.scheme
        self._host = parts.hostname
        try:
            self._port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError("host %s: the port is not a number" % server)
        self._base_path = parts.path.rstrip("/")
        self._timeout = timeout
        self._token = token
        self._tls_server_name = tls_server_name or self._host
        self._tls = None
        if self._scheme == "https":
            self._tls = _tls_context(ca_file, ca_data, cert_file, key_file, cert_data, key_data, verify)
        self._local = threading.local()
        self._connections = []
        self._lock = threading.Lock()
        self._discovery = {}

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_module_params(cls, params, timeout=DEFAULT_TIMEOUT):
        """A client from the ``k8s_auth`` options: a kubeconfig, overridden by the explicit options."""
        if not HAS_YAML:
            raise ConfigError("PyYAML is required to read a kubeconfig")
        kubeconfig = params.get("kubeconfig")
        cluster, user = {}, {}
        config_dir = None
        if not kubeconfig and not params.get("host"):
            default = os.path.expanduser("~/.kube/config")
            if os.path.exists(default):
                kubeconfig = default
            else:
                raise ConfigError("neither kubeconfig nor host is set, and there is no ~/.kube/config")
        if kubeconfig:
            cluster, user = _read_kubeconfig(kubeconfig, params.get("context"))
            config_dir = os.path.dirname(os.path.abspath(kubeconfig))
        server = params.get("host") or cluster.get("server")
        if not server:
            raise ConfigError("the kubeconfig's cluster has no server and host is not set")

        def relative(path):
            if path and config_dir and not os.path.isabs(path):
                return os.path.join(config_dir, path)
            return path

        ca_file = params.get("ca_cert") or relative(cluster.get("certificate-authority"))
        ca_data = None if params.get("ca_cert") else _decode_data(cluster, "certificate-authority-data")
        explicit_cert = bool(params.get("client_cert") or params.get("client_key"))
        cert_file = params.get("client_cert") if explicit_cert else relative(user.get("client-certificate"))
        key_file = params.get("client_key") if explicit_cert else relative(user.get("client-key"))
        cert_data = None if explicit_cert else _decode_data(user, "client-certificate-data")
        key_data = None if explicit_cert else _decode_data(user, "client-key-data")
        token = params.get("api_key") or user.get("token")
        if not token and user.get("tokenFile"):
            token = _read_text(relative(user["tokenFile"]), "the kubeconfig's tokenFile").strip()
        if not (cert_file or cert_data or token) and user and (user.get("exec") or user.get("auth-provider")):
            raise ConfigError("the kubeconfig's user authenticates with an exec or auth-provider plugin, which is "
                              "not supported; use a client certificate or a token (api_key)")
        verify = params.get("validate_certs", True) and not cluster.get("insecure-skip-tls-verify", False)
        return cls(server, ca_file=ca_file, ca_data=ca_data, cert_file=cert_file, key_file=key_file,
                   cert_data=cert_data, key_data=key_data, token=token, verify=verify,
                   tls_server_name=cluster.get("tls-server-name") if not params.get("host") else None,
                   timeout=timeout)

    # -- transport ---------------------------------------------------------------

    def close(self):
        """Close every connection this client opened (in any thread)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._scheme == "https":
                connection = _HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._tls,
                                              server_hostname=self._tls_server_name)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
            self._local.used = False
            with self._lock:
                self._connections.append(connection)
        return connection

    def _drop_connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
        self._local.connection = None

    def _url(self, path, query):
        url = self._base_path + path
        if query:
            url += "?" + urlencode([(k, v) for k, v in query.items() if v is not None and v != ""])
        return url

    def _open(self, method, path, query=None, body=None, headers=None):
        """Send one request and return the response (the caller reads it).

        A kept-alive connection the server closed meanwhile is reopened once.
        """
        url = self._url(path, query)
        all_headers = {"User-Agent": USER_AGENT, "Accept": JSON}
        if self._token:
            all_headers["Authorization"] = "Bearer %s" % self._token
        all_headers.update(headers or {})
        for attempt in (0, 1):
            connection = self._connection()
            reused = self._local.used
            try:
                connection.request(method, url, body=body, headers=all_headers)
                response = connection.getresponse()
            except _STALE_CONNECTION_ERRORS as exc:
                self._drop_connection()
                if reused and attempt == 0:
                    continue
                raise ApiError(None, "ConnectionError", path, method, _describe_connection_error(exc))
            except ssl.SSLError as exc:
                self._drop_connection()
                raise ApiError(None, "TLSError", path, method, _describe_tls_error(exc))
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise ApiError(None, "ConnectionError", path, method, _describe_connection_error(exc))
            self._local.used = True
            return response
        raise ApiError(None, "ConnectionError", path, method, "no answer")  # not reached

    def _read(self, response, method, path):
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise ApiError(None, "ConnectionError", path, method, _describe_connection_error(exc))
        if response.will_close:
            self._drop_connection()
        return data

    # -- API ---------------------------------------------------------------------

    def request(self, method, path, query=None, body=None, content_type=JSON, accept=JSON):
        """Send a request; return ``(status, headers, parsed JSON or text)``.

        ``body`` may be bytes, text or a JSON-serializable object.  An answer of
        400 or more raises ``ApiError``.
        """
        headers = {"Accept": accept}
        if body is not None:
            if not isinstance(body, (bytes, str)):
                body = json.dumps(body, separators=(",", ":"))
            if isinstance(body, str):
                body = body.encode("utf-8")
            headers["Content-Type"] = content_type
        response = self._open(method, path, query, body, headers)
        data = self._read(response, method, path)
        response_headers = dict((k.lower(), v) for k, v in response.getheaders())
        parsed = _parse_body(response_headers, data)
        if response.status >= 400:
            raise _error_from_response(method, path, response.status, response.reason, response_headers, parsed)
        return response.status, response_headers, parsed

    def get_raw(self, path, query=None, line_filter=None):
        """GET a non-resource path; return ``(status, text)`` whatever the status.

        With ``line_filter`` (a callable on each line, without the newline) only
        the lines it accepts are kept, so a large ``/metrics`` is read as a
        stream and never held whole.
        """
        response = self._open("GET", path, query, None, {"Accept": "text/plain, */*"})
        if line_filter is None:
            return response.status, self._read(response, "GET", path).decode("utf-8", "replace")
        kept = []
        rest = b""
        try:
            while True:
                chunk = response.read(_STREAM_CHUNK)
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop() if chunk else b""
                for line in lines:
                    text = line.decode("utf-8", "replace").rstrip("\r")
                    if line_filter(text):
                        kept.append(text)
                if not chunk:
                    break
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise ApiError(None, "ConnectionError", path, "GET", _describe_connection_error(exc))
        if response.will_close:
            self._drop_connection()
        return response.status, "\n".join(kept)

    def list_page(self, path, limit, continue_token=None, accept_metadata_only=True, query=None):
        """One page of a list (``limit`` items at most) from ``continue_token``; returns a ``ListPage``.

        An expired ``continue_token`` raises ``ApiError`` with status 410.
        """
        params = dict(query or {})
        params["limit"] = int(limit)
        if continue_token:
            params["continue"] = continue_token
        _status, _headers, data = self.request("GET", path, query=params,
                                               accept=METADATA_LIST if accept_metadata_only else JSON)
        if not isinstance(data, dict):
            raise ApiError(200, "UnexpectedAnswer", path, "GET", "the list answer is not a JSON object")
        metadata = data.get("metadata") or {}
        return ListPage(data.get("items") or [], metadata.get("continue"), metadata.get("resourceVersion"),
                        metadata.get("remainingItemCount"))

    def list_pages(self, path, limit, continue_token=None, accept_metadata_only=True, query=None):
        """Iterate the pages of a list, ``limit`` items each, from ``continue_token`` to the end."""
        while True:
            page = self.list_page(path, limit, continue_token, accept_metadata_only, query)
            yield page
            if not page.continue_token:
                return
            continue_token = page.continue_token

    def server_version(self):
        """``(major, minor, gitVersion)`` from ``/version``; minor may carry a ``+`` that is dropped."""
        _status, _headers, data = self.request("GET", "/version")
        if not isinstance(data, dict):
            raise ApiError(200, "UnexpectedAnswer", "/version", "GET", "the answer is not a JSON object")
        return _version_number(data.get("major")), _version_number(data.get("minor")), data.get("gitVersion")

    def resolve_resource(self, name):
        """Find ``secrets``, ``deployments.apps`` or ``widgets.example.com`` through discovery.

        The group's preferred version is used.  Raises ``ApiError`` (404) when
        the group or the resource does not exist.
        """
        resource, _sep, group = name.partition(".")
        if group:
            _status, _headers, data = self._discover("/apis/%s" % _segment(group), name)
            preferred = (data.get("preferredVersion") or {}).get("version") if isinstance(data, dict) else None
            if not preferred:
                raise ApiError(404, "NotFound", "/apis/%s" % group, "GET", "API group %s has no versions" % group)
            version = preferred
            listing_path = "/apis/%s/%s" % (_segment(group), _segment(version))
        else:
            version = "v1"
            listing_path = "/api/v1"
        _status, _headers, listing = self._discover(listing_path, name)
        for entry in (listing.get("resources") or []) if isinstance(listing, dict) else []:
            if entry.get("name") == resource:
                return ApiResource(resource, group, version, bool(entry.get("namespaced")), entry.get("kind"),
                                   entry.get("verbs"))
        raise ApiError(404, "NotFound", listing_path, "GET", "the server has no resource %s" % name)

    def _discover(self, path, name):
        if path not in self._discovery:
            try:
                self._discovery[path] = self.request("GET", path)
            except ApiError as exc:
                if exc.status == 404:
                    raise ApiError(404, "NotFound", path, "GET", "the server has no resource %s" % name)
                raise
        return self._discovery[path]


class _HTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection whose TLS server name may differ from the address it connects to."""

    def __init__(self, host, port, timeout, context, server_hostname):
        http.client.HTTPSConnection.__init__(self, host, port, timeout=timeout, context=context)
        self._kubecrypt_context = context
        self._kubecrypt_server_hostname = server_hostname

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout, self.source_address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._kubecrypt_context.wrap_socket(sock, server_hostname=self._kubecrypt_server_hostname)


def _segment(value):
    return quote(str(value), safe="")


def _shorten(text):
    text = " ".join(str(text).split())
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT - 3] + "..."


def _version_number(value):
    digits = ""
    for char in str(value or ""):
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else None


def _parse_body(headers, data):
    content_type = headers.get("content-type", "")
    if "json" in content_type:
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError:
            pass
    return data.decode("utf-8", "replace")


def _error_from_response(method, path, status, http_reason, headers, parsed):
    reason, message = http_reason, None
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        reason = parsed.get("reason") or http_reason
        message = parsed.get("message")
    elif isinstance(parsed, str) and parsed.strip():
        message = parsed
    retry_after = None
    try:
        retry_after = float(headers.get("retry-after")) if headers.get("retry-after") else None
    except ValueError:
        retry_after = None
    return ApiError(status, reason, path, method, message, retry_after)


def _read_kubeconfig(path, context_name):
    """``(cluster, user)`` dicts of the kubeconfig's context (``context_name`` or current-context)."""
    text = _read_text(path, "kubeconfig")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("kubeconfig %s is not valid YAML: %s" % (path, getattr(exc, "problem", None) or exc))
    if not isinstance(config, dict):
        raise ConfigError("kubeconfig %s is not a kubeconfig" % path)
    name = context_name or config.get("current-context")
    if not name:
        raise ConfigError("kubeconfig %s has no current-context; set context" % path)
    context = _named(config, "contexts", name, "context", path)
    cluster = _named(config, "clusters", context.get("cluster"), "cluster", path) if context.get("cluster") else {}
    user = _named(config, "users", context.get("user"), "user", path) if context.get("user") else {}
    return cluster, user


def _named(config, section, name, field, path):
    for entry in config.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get(field) or {}
    raise ConfigError("kubeconfig %s has no %s named %s" % (path, section[:-1], name))


def _read_text(path, what):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError) as exc:
        raise ConfigError("cannot read %s %s: %s" % (what, path, exc.strerror or exc))


def _decode_data(section, field):
    value = section.get(field)
    if not value:
        return None
    try:
        return base64.b64decode(value)
    except (TypeError, ValueError):
        raise ConfigError("the kubeconfig's %s is not base64" % field)


def _tls_context(ca_file, ca_data, cert_file, key_file, cert_data, key_data, verify):
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            if ca_file:
                context.load_verify_locations(cafile=ca_file)
            if ca_data:
                context.load_verify_locations(cadata=ca_data.decode("ascii", "replace"))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError("the CA certificate (%s) cannot be loaded: %s" % (
                ca_file or "certificate-authority-data", getattr(exc, "strerror", None) or exc))
    if cert_file or key_file:
        if not (cert_file and key_file):
            raise ConfigError("client_cert and client_key must be given together")
        _load_cert_chain(context, cert_file, key_file, "client_cert %s and client_key %s" % (cert_file, key_file))
    elif cert_data or key_data:
        if not (cert_data and key_data):
            raise ConfigError("the kubeconfig has only one of client-certificate-data and client-key-data")
        # ssl loads certificates from files only: a private directory, removed at once.
        directory = tempfile.mkdtemp(prefix=".kubecrypt-tls-")
        try:
            cert_path = os.path.join(directory, "client.crt")
            key_path = os.path.join(directory, "client.key")
            for path, data in ((cert_path, cert_data), (key_path, key_data)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            _load_cert_chain(context, cert_path, key_path, "the kubeconfig's client-certificate-data and "
                                                           "client-key-data")
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return context


def _load_cert_chain(context, cert_file, key_file, what):
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError("%s are not a readable, matching PEM certificate and unencrypted key: %s" % (
            what, getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc))


def _describe_connection_error(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout) or exc.__class__.__name__ in ("timeout", "TimeoutError"):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__


def _describe_tls_error(exc):
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the server certificate was not accepted (%s); check ca_cert and that the host is in the " \
               "certificate" % (getattr(exc, "verify_message", None) or exc)
    return "TLS: %s" % (getattr(exc, "reason", None) or exc)
