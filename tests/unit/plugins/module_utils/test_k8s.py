"""Unit tests of module_utils/k8s.py against a small HTTPS server in this process."""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import socket
import ssl
import threading

import pytest
import yaml

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.kubecrypt.at_rest.plugins.module_utils import k8s

SECRET_MARKER = "s3cr3t-value-that-must-never-show"


# ---------------------------------------------------------------------------
# Certificates and the fake apiserver


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(ca_key, ca_name, common_name, key=None, ca=False, ips=()):
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ips:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(ca_key or key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_pem, _ca_key_pem, _k = _issue(None, _name("test-ca"), "test-ca", key=ca_key, ca=True)
    server_pem, server_key, _k = _issue(ca_key, _name("test-ca"), "apiserver", ips=("127.0.0.1",))
    client_pem, client_key, _k = _issue(ca_key, _name("test-ca"), "kubernetes-admin")
    other_ca_pem = _issue(None, _name("other-ca"), "other-ca", ca=True)[0]
    files = {}
    for name, data in (("ca.crt", ca_pem), ("server.crt", server_pem), ("server.key", server_key),
                       ("client.crt", client_pem), ("client.key", client_key), ("other-ca.crt", other_ca_pem)):
        path = directory / name
        path.write_bytes(data)
        files[name] = str(path)
    files["dir"] = str(directory)
    return files


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        http.server.BaseHTTPRequestHandler.setup(self)
        with self.server.lock:
            self.server.connections += 1

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        peer = self.connection.getpeercert()
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        record = dict(method=self.command, path=self.path, headers=dict(self.headers), body=body,
                      client_cn=subject.get("commonName"), thread=threading.current_thread().name)
        with self.server.lock:
            self.server.requests.append(record)
        status, headers, payload = self.server.route(record)
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload).encode()
            headers = dict(headers, **{"Content-Type": "application/json"})
        elif isinstance(payload, str):
            payload = payload.encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        if self.server.close_after_response:
            # Close the kept-alive connection without saying so, like an idle timeout.
            self.close_connection = True

    do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _handle


class FakeApiserver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, pki):
        http.server.ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), _Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca.crt"])
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_cert_chain(pki["server.crt"], pki["server.key"])
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []
        self.routes = {}
        self.close_after_response = False
        self.url = "https://127.0.0.1:%d" % self.server_address[1]

    def route(self, record):
        path = record["path"].split("?", 1)[0]
        handler = self.routes.get((record["method"], path)) or self.routes.get(path)
        if handler is None:
            return 404, {}, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                             "message": "the server could not find the requested resource", "code": 404}
        return handler(record) if callable(handler) else handler


@pytest.fixture
def server(pki):
    fake = FakeApiserver(pki)
    thread = threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.routes["/version"] = (200, {}, {"major": "1", "minor": "37+", "gitVersion": "v1.37.2"})
    yield fake
    fake.shutdown()
    fake.server_close()


def _kubeconfig(path, server, user, cluster_extra=None, context="admin@test", extra_contexts=()):
    cluster = {"server": server}
    cluster.update(cluster_extra or {})
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "admin", "user": user}],
        "contexts": [{"name": "admin@test", "context": {"cluster": "test", "user": "admin"}}] + list(extra_contexts),
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _params(**kwargs):
    params = dict(kubeconfig=None, context=None, host=None, ca_cert=None, client_cert=None, client_key=None,
                  validate_certs=True, api_key=None)
    params.update(kwargs)
    return params


# ---------------------------------------------------------------------------
# Argument specs


def test_auth_argument_spec():
    spec = k8s.k8s_auth_argument_spec()
    assert sorted(spec) == ["api_key", "ca_cert", "client_cert", "client_key", "context", "host", "kubeconfig",
                            "validate_certs"]
    assert spec["api_key"]["no_log"] is True
    assert spec["validate_certs"]["default"] is True
    envs = {name: option["fallback"][1][0] for name, option in spec.items()}
    assert envs == {"kubeconfig": "K8S_AUTH_KUBECONFIG", "context": "K8S_AUTH_CONTEXT", "host": "K8S_AUTH_HOST",
                    "ca_cert": "K8S_AUTH_SSL_CA_CERT", "client_cert": "K8S_AUTH_CERT_FILE",
                    "client_key": "K8S_AUTH_KEY_FILE", "validate_certs": "K8S_AUTH_VERIFY_SSL",
                    "api_key": "K8S_AUTH_API_KEY"}


def test_wait_argument_spec():
    assert k8s.wait_argument_spec() == {"wait_timeout": {"type": "int", "default": 300},
                                        "wait_sleep": {"type": "float", "default": 2}}


# ---------------------------------------------------------------------------
# Kubeconfig and auth


def test_kubeconfig_with_relative_paths_and_host_override(server, pki, tmp_path):
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_bytes(open(pki[name], "rb").read())
    path = _kubeconfig(tmp_path / "admin.conf", "https://10.255.255.1:6443",
                       {"client-certificate": "client.crt", "client-key": "client.key"},
                       {"certificate-authority": "ca.crt"})
    with k8s.ApiClient.from_module_params(_params(kubeconfig=path, host=server.url)) as client:
        assert client.server == server.url
        assert client.server_version() == (1, 37, "v1.37.2")
    assert server.requests[-1]["client_cn"] == "kubernetes-admin"
    assert server.requests[-1]["headers"]["User-Agent"] == "kubecrypt.at_rest"


def test_kubeconfig_with_data_fields_token_file_and_context(server, pki, tmp_path):
    (tmp_path / "token").write_text("file-token\n")
    data = dict((field, base64.b64encode(open(pki[name], "rb").read()).decode())
                for field, name in (("client-certificate-data", "client.crt"), ("client-key-data", "client.key")))
    data["tokenFile"] = "token"
    other = {"name": "other", "context": {"cluster": "missing", "user": "admin"}}
    path = _kubeconfig(tmp_path / "config", server.url, data,
                       {"certificate-authority-data": base64.b64encode(open(pki["ca.crt"], "rb").read()).decode()},
                       context="other", extra_contexts=[other])
    with pytest.raises(k8s.ConfigError, match="no cluster named missing"):
        k8s.ApiClient.from_module_params(_params(kubeconfig=path))
    with k8s.ApiClient.from_module_params(_params(kubeconfig=path, context="admin@test")) as client:
        client.server_version()
    assert server.requests[-1]["client_cn"] == "kubernetes-admin"
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer file-token"
    assert not [name for name in os.listdir(os.path.dirname(str(tmp_path))) if name.startswith(".kubecrypt-tls-")]


def test_explicit_options_override_the_kubeconfig(server, pki, tmp_path):
    path = _kubeconfig(tmp_path / "config", "https://10.255.255.1:6443", {"token": "kubeconfig-token"},
                       {"certificate-authority": pki["other-ca.crt"]})
    params = _params(kubeconfig=path, host=server.url, ca_cert=pki["ca.crt"], client_cert=pki["client.crt"],
                     client_key=pki["client.key"], api_key="option-token")
    with k8s.ApiClient.from_module_params(params) as client:
        client.server_version()
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer option-token"
    assert server.requests[-1]["client_cn"] == "kubernetes-admin"


def test_host_without_kubeconfig(server, pki):
    with k8s.ApiClient.from_module_params(_params(host=server.url, ca_cert=pki["ca.crt"])) as client:
        client.server_version()
    assert server.requests[-1]["client_cn"] is None
    assert "Authorization" not in server.requests[-1]["headers"]


def test_certificate_verification(server, pki, tmp_path):
    with k8s.ApiClient.from_module_params(_params(host=server.url, ca_cert=pki["other-ca.crt"])) as client:
        with pytest.raises(k8s.ApiError) as caught:
            client.server_version()
    assert caught.value.status is None and caught.value.reason == "TLSError"
    assert "check ca_cert" in str(caught.value)
    with k8s.ApiClient.from_module_params(_params(host=server.url, ca_cert=pki["other-ca.crt"],
                                                  validate_certs=False)) as client:
        assert client.server_version()[1] == 37
    path = _kubeconfig(tmp_path / "config", server.url, {}, {"insecure-skip-tls-verify": True})
    with k8s.ApiClient.from_module_params(_params(kubeconfig=path)) as client:
        assert client.server_version()[1] == 37


@pytest.mark.parametrize("user, cluster, message", [
    ({"exec": {"command": "aws"}}, {}, "exec or auth-provider"),
    ({"client-certificate": "/nonexistent.crt", "client-key": "/nonexistent.key"}, {}, "not a readable"),
    ({"client-certificate-data": base64.b64encode(b"x").decode()}, {}, "only one of"),
    ({}, {"certificate-authority": "/nonexistent/ca.crt"}, "cannot be loaded"),
])
def test_kubeconfig_problems(tmp_path, user, cluster, message):
    path = _kubeconfig(tmp_path / "config", "https://127.0.0.1:1", user, cluster)
    with pytest.raises(k8s.ConfigError, match=message):
        k8s.ApiClient.from_module_params(_params(kubeconfig=path))


def test_kubeconfig_file_problems(tmp_path, monkeypatch):
    with pytest.raises(k8s.ConfigError, match="cannot read kubeconfig"):
        k8s.ApiClient.from_module_params(_params(kubeconfig=str(tmp_path / "missing")))
    (tmp_path / "bad").write_text("{ not yaml")
    with pytest.raises(k8s.ConfigError, match="not valid YAML"):
        k8s.ApiClient.from_module_params(_params(kubeconfig=str(tmp_path / "bad")))
    (tmp_path / "nocontext").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(k8s.ConfigError, match="no current-context"):
        k8s.ApiClient.from_module_params(_params(kubeconfig=str(tmp_path / "nocontext")))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(k8s.ConfigError, match="neither kubeconfig nor host"):
        k8s.ApiClient.from_module_params(_params())
    with pytest.raises(k8s.ConfigError, match="only https"):
        k8s.ApiClient("ftp://x")


# ---------------------------------------------------------------------------
# Requests and errors


def _client(server, pki, **kwargs):
    return k8s.ApiClient(server.url, ca_file=pki["ca.crt"], cert_file=pki["client.crt"], key_file=pki["client.key"],
                         **kwargs)


def test_request_json_and_errors_without_request_bodies(server, pki):
    server.routes[("PATCH", "/api/v1/namespaces/default/secrets/x")] = (
        500, {}, {"kind": "Status", "status": "Failure", "reason": "InternalError", "code": 500,
                  "message": "Internal error occurred: " + "y" * 400})
    server.routes[("GET", "/api/v1/namespaces/default/secrets/x")] = (200, {}, {"metadata": {"name": "x"}})
    with _client(server, pki) as client:
        status, headers, data = client.request("GET", "/api/v1/namespaces/default/secrets/x")
        assert status == 200 and data == {"metadata": {"name": "x"}}
        assert headers["content-type"] == "application/json"
        with pytest.raises(k8s.ApiError) as caught:
            client.request("PATCH", "/api/v1/namespaces/default/secrets/x", query={"dryRun": "All"},
                           body={"data": {"password": base64.b64encode(SECRET_MARKER.encode()).decode()}},
                           content_type=k8s.MERGE_PATCH)
    error = caught.value
    assert (error.status, error.reason, error.method) == (500, "InternalError", "PATCH")
    assert error.path == "/api/v1/namespaces/default/secrets/x"
    assert len(error.message) == 300 and error.message.endswith("...")
    text = str(error) + json.dumps(error.to_dict())
    assert base64.b64encode(SECRET_MARKER.encode()).decode() not in text and "dryRun" not in text
    sent = server.requests[-1]
    assert sent["headers"]["Content-Type"] == k8s.MERGE_PATCH and sent["path"].endswith("?dryRun=All")
    assert json.loads(sent["body"])["data"]["password"]


def test_not_found_and_plain_text_errors_and_retry_after(server, pki):
    server.routes["/text"] = (429, {"Retry-After": "3"}, "slow down")
    with _client(server, pki) as client:
        with pytest.raises(k8s.ApiError) as missing:
            client.request("GET", "/api/v1/namespaces/default/secrets/nope")
        with pytest.raises(k8s.ApiError) as busy:
            client.request("GET", "/text")
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    assert (busy.value.status, busy.value.retry_after, busy.value.message) == (429, 3.0, "slow down")


def test_connection_refused(pki):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    client = k8s.ApiClient("https://127.0.0.1:%d" % port, ca_file=pki["ca.crt"], timeout=2)
    with pytest.raises(k8s.ApiError) as caught:
        client.get_raw("/readyz")
    assert caught.value.status is None and caught.value.message == "connection refused"


def test_keep_alive_one_connection_per_thread(server, pki):
    server.routes["/readyz"] = (200, {"Content-Type": "text/plain"}, "ok")
    with _client(server, pki) as client:
        for _attempt in range(5):
            assert client.get_raw("/readyz") == (200, "ok")
        assert server.connections == 1
        errors = []

        def work():
            try:
                for _attempt in range(3):
                    client.get_raw("/readyz")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _attempt in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert server.connections == 5
        assert len(client._connections) == 5
    assert client._connections == []


def test_a_connection_closed_by_the_server_is_reopened(server, pki):
    server.routes["/readyz"] = (200, {}, "ok")
    server.close_after_response = True
    with _client(server, pki) as client:
        for _attempt in range(3):
            assert client.get_raw("/readyz") == (200, "ok")
    assert server.connections == 3


def test_get_raw_with_a_line_filter_and_any_status(server, pki):
    metrics = "\n".join(["# HELP x", "go_goroutines 1", "process_start_time_seconds 1.7e+09"] * 1000) + "\n"
    server.routes["/metrics"] = (200, {"Content-Type": "text/plain; version=0.0.4"}, metrics)
    server.routes["/readyz"] = (500, {}, "[-]etcd failed: reason withheld\nreadyz check failed\n")
    with _client(server, pki) as client:
        status, text = client.get_raw("/metrics", line_filter=lambda line: line.startswith("process_"))
        assert status == 200 and text.splitlines() == ["process_start_time_seconds 1.7e+09"] * 1000
        assert client.get_raw("/readyz", {"verbose": "true"})[0] == 500
        assert client.get_raw("/metrics")[1] == metrics
    assert server.requests[-2]["path"] == "/readyz?verbose=true"
    assert server.connections == 1


def test_list_pages_follow_continue_tokens_with_metadata_only(server, pki):
    pages = {"": (["a", "b"], "t1"), "t1": (["c", "d"], "t2"), "t2": (["e"], "")}

    def listing(record):
        query = dict(part.split("=", 1) for part in record["path"].split("?", 1)[1].split("&"))
        if query.get("continue") == "expired":
            return 410, {}, {"kind": "Status", "reason": "Expired", "code": 410,
                             "message": "The provided continue parameter is too old"}
        names, token = pages[query.get("continue", "")]
        assert query["limit"] == "2"
        return 200, {}, {"kind": "PartialObjectMetadataList", "metadata": {"continue": token, "resourceVersion": "9"},
                         "items": [{"metadata": {"name": name, "namespace": "default"}} for name in names]}

    server.routes["/api/v1/secrets"] = listing
    with _client(server, pki) as client:
        names = [[item["metadata"]["name"] for item in page.items] for page in client.list_pages("/api/v1/secrets", 2)]
        assert names == [["a", "b"], ["c", "d"], ["e"]]
        page = client.list_page("/api/v1/secrets", 2, "t1")
        assert page.continue_token == "t2" and page.resource_version == "9"
        with pytest.raises(k8s.ApiError) as caught:
            client.list_page("/api/v1/secrets", 2, "expired")
    assert caught.value.status == 410 and caught.value.reason == "Expired"
    assert server.requests[0]["headers"]["Accept"] == k8s.METADATA_LIST


def test_resolve_resource_through_discovery(server, pki):
    server.routes["/api/v1"] = (200, {}, {"resources": [
        {"name": "secrets", "namespaced": True, "kind": "Secret", "verbs": ["get", "list", "patch"]},
        {"name": "namespaces", "namespaced": False, "kind": "Namespace", "verbs": ["list"]}]})
    server.routes["/apis/apps"] = (200, {}, {"preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}})
    server.routes["/apis/apps/v1"] = (200, {}, {"resources": [
        {"name": "deployments", "namespaced": True, "kind": "Deployment", "verbs": ["list", "patch"]},
        {"name": "deployments/status", "namespaced": True, "kind": "Deployment", "verbs": ["patch"]}]})
    with _client(server, pki) as client:
        secrets = client.resolve_resource("secrets")
        deployments = client.resolve_resource("deployments.apps")
        namespaces = client.resolve_resource("namespaces")
        with pytest.raises(k8s.ApiError, match="no resource widgets.example.com"):
            client.resolve_resource("widgets.example.com")
        with pytest.raises(k8s.ApiError, match="no resource foos"):
            client.resolve_resource("foos")
        client.resolve_resource("deployments.apps")
    assert [r["path"] for r in server.requests].count("/apis/apps/v1") == 1  # cached
    assert secrets.collection_path() == "/api/v1/secrets"
    assert secrets.collection_path("kube-system") == "/api/v1/namespaces/kube-system/secrets"
    assert secrets.object_path("a b/c", "default") == "/api/v1/namespaces/default/secrets/a%20b%2Fc"
    assert deployments.qualified_name == "deployments.apps" and deployments.group_version == "apps/v1"
    assert deployments.collection_path("ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert namespaces.collection_path("ignored") == "/api/v1/namespaces"
    assert namespaces.object_path("default", "ignored") == "/api/v1/namespaces/default"
