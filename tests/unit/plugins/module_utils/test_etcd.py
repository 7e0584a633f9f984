"""The etcd JSON-gateway client against a fake gateway that speaks the same protocol over mutual TLS."""

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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.kubecrypt.at_rest.plugins.module_utils.etcd import (
    EtcdClient,
    EtcdError,
    client_from_params,
    etcd_argument_spec,
    prefix_range_end,
)

# ---------------------------------------------------------------------------
# Certificates


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class _CA(object):
    def __init__(self, common_name):
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, directory, stem, server=False):
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        paths = os.path.join(directory, stem + ".crt"), os.path.join(directory, stem + ".key")
        with open(paths[0], "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(paths[1], "wb") as handle:
            handle.write(_pem_key(key))
        return paths

    def write(self, directory, stem):
        path = os.path.join(directory, stem + ".crt")
        with open(path, "wb") as handle:
            handle.write(self.cert.public_bytes(serialization.Encoding.PEM))
        return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pki"))
    etcd_ca, other_ca = _CA("etcd-ca"), _CA("other-ca")
    paths = {
        "ca": etcd_ca.write(directory, "etcd-ca"),
        "other_ca": other_ca.write(directory, "other-ca"),
        "server": etcd_ca.issue(directory, "server", server=True),
        "other_server": other_ca.issue(directory, "other-server", server=True),
        "client": etcd_ca.issue(directory, "client"),
        "other_client": other_ca.issue(directory, "other-client"),
    }
    return paths


# ---------------------------------------------------------------------------
# A fake etcd v3 JSON gateway with an MVCC history


class FakeEtcd(object):
    """Keys with revisions, ``/v3/kv/range`` and ``/v3/maintenance/status`` like etcd's gateway."""

    def __init__(self):
        self.history = []  # (revision, key, value)
        self.revision = 1
        self.compacted = 0
        self.requests = []
        self.unavailable = False
        self.drop_connections = False
        self.answer = None  # (status, body bytes) to answer every request with
        self.on_range = None  # called after each range request (to write between pages)

    def put(self, key, value):
        self.revision += 1
        self.history.append((self.revision, _bytes(key), _bytes(value)))

    def state(self, revision):
        current = {}
        for rev, key, value in self.history:
            if rev <= revision:
                current[key] = value
        return current

    def range(self, request):
        revision = int(request.get("revision") or 0) or self.revision
        if revision > self.revision:
            return 400, {"code": 11, "message": "etcdserver: mvcc: required revision is a future revision"}
        if revision < self.compacted:
            return 400, {"code": 11, "message": "etcdserver: mvcc: required revision has been compacted"}
        start = base64.b64decode(request.get("key", ""))
        end = base64.b64decode(request.get("range_end", "")) if request.get("range_end") else None
        keys = sorted(self.state(revision))
        if end is None:
            selected = [key for key in keys if key == start]
        elif end == b"\x00":
            selected = [key for key in keys if key >= start]
        else:
            selected = [key for key in keys if start <= key < end]
        limit = int(request.get("limit") or 0)
        page = selected[:limit] if limit else selected
        kvs = []
        for key in page:
            entry = {"key": base64.b64encode(key).decode(), "mod_revision": "1"}
            if not request.get("keys_only"):
                entry["value"] = base64.b64encode(self.state(revision)[key]).decode()
            kvs.append(entry)
        answer = {"header": {"cluster_id": "1", "member_id": "2", "revision": str(self.revision), "raft_term": "3"}}
        if kvs:
            answer["kvs"] = kvs
            answer["count"] = str(len(selected))
        if limit and len(selected) > limit:
            answer["more"] = True
        return 200, answer

    def status(self):
        return 200, {"header": {"cluster_id": "1", "member_id": "2", "revision": str(self.revision),
                                "raft_term": "3"},
                     "version": "3.6.16", "dbSize": "4096", "leader": "2", "dbSizeInUse": "2048"}


def _bytes(text):
    return text if isinstance(text, bytes) else text.encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        fake.requests.append((self.path, request))
        if fake.answer is not None:
            status, body = fake.answer
        elif fake.unavailable:
            status, body = 503, json.dumps({"code": 14, "message": "etcdserver: no leader"}).encode()
        elif self.path == "/v3/kv/range":
            status, answer = fake.range(request)
            body = json.dumps(answer).encode()
        elif self.path == "/v3/maintenance/status":
            status, answer = fake.status()
            body = json.dumps(answer).encode()
        else:
            status, body = 404, b"404 page not found\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if fake.drop_connections:
            # Close without announcing it, like an idle keep-alive connection a server drops.
            self.close_connection = True
        if fake.on_range and self.path == "/v3/kv/range":
            fake.on_range(fake)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


@pytest.fixture
def gateway(certs):
    """Start a fake gateway; returns a factory ``(server_cert=..., tls=True) -> (url, fake)``."""
    servers = []

    def start(server_pair=None, tls=True, fake=None):
        fake = fake or FakeEtcd()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = fake
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*(server_pair or certs["server"]))
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(certs["ca"])
            server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        servers.append(server)
        return "%s://127.0.0.1:%d" % ("https" if tls else "http", server.server_address[1]), fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _closed_port():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return "https://127.0.0.1:%d" % port


def _client(certs, *endpoints, **kwargs):
    kwargs.setdefault("timeout", 5)
    return EtcdClient(list(endpoints), certs["ca"], certs["client"][0], certs["client"][1], **kwargs)


def _fill(fake):
    for name in ("a", "b", "c", "d", "e", "f", "g"):
        fake.put("/registry/secrets/default/%s" % name, b"k8s\x00value-" + name.encode())
    fake.put("/registry/secretsx/default/a", b"{}")
    fake.put("/registry/configmaps/default/a", b"{}")


# ---------------------------------------------------------------------------
# Reading


def test_get_returns_the_raw_value_or_none(certs, gateway):
    url, fake = gateway()
    fake.put("/registry/secrets/default/a", b"k8s:enc:secretbox:v1:k:\x00\xff")
    with _client(certs, url) as client:
        assert client.get("/registry/secrets/default/a") == b"k8s:enc:secretbox:v1:k:\x00\xff"
        assert client.get(b"/registry/secrets/default/a") == b"k8s:enc:secretbox:v1:k:\x00\xff"
        assert client.get("/registry/secrets/default/missing") is None


def test_range_iter_pages_within_the_prefix_at_one_revision(certs, gateway):
    url, fake = gateway()
    _fill(fake)
    with _client(certs, url) as client:
        scan = client.range_iter("/registry/secrets/", page_size=3)
        items = list(scan)
    assert [key for key, _value in items] == [("/registry/secrets/default/%s" % n).encode() for n in "abcdefg"]
    assert items[0][1] == b"k8s\x00value-a"
    ranges = [request for path, request in fake.requests if path == "/v3/kv/range"]
    assert len(ranges) == 3 and scan.pages == 3
    assert "revision" not in ranges[0]
    assert all(request["revision"] == scan.revision == fake.revision for request in ranges[1:])
    assert all(request["limit"] == 3 for request in ranges)
    assert base64.b64decode(ranges[0]["range_end"]) == b"/registry/secrets0"
    # Each page starts right after the last key of the previous one.
    assert base64.b64decode(ranges[1]["key"]) == b"/registry/secrets/default/c\x00"


def test_range_iter_is_a_snapshot_even_when_etcd_changes_between_pages(certs, gateway):
    url, fake = gateway()
    _fill(fake)

    def write_between_pages(fake):
        fake.on_range = None
        fake.put("/registry/secrets/default/b2", b"k8s\x00new")
        fake.put("/registry/secrets/default/z", b"k8s\x00new")
        fake.put("/registry/secrets/default/f", b"k8s\x00changed")

    fake.on_range = write_between_pages
    with _client(certs, url) as client:
        scan = client.range_iter("/registry/secrets/", page_size=2)
        items = dict(scan)
    assert len(items) == 7
    assert b"/registry/secrets/default/z" not in items and b"/registry/secrets/default/b2" not in items
    assert items[b"/registry/secrets/default/f"] == b"k8s\x00value-f"
    assert scan.revision == fake.revision - 3


def test_range_iter_uses_a_given_revision_and_keys_only(certs, gateway):
    url, fake = gateway()
    _fill(fake)
    with _client(certs, url) as client:
        items = list(client.range_iter("/registry/secrets/", page_size=100, keys_only=True, revision=4))
    assert items == [(("/registry/secrets/default/%s" % n).encode(), b"") for n in "abc"]
    assert fake.requests[0][1]["revision"] == 4 and fake.requests[0][1]["keys_only"] is True


def test_range_iter_of_an_empty_prefix_reports_the_revision(certs, gateway):
    url, fake = gateway()
    _fill(fake)
    with _client(certs, url) as client:
        scan = client.range_iter("/registry/nothing/")
        assert list(scan) == []
        assert scan.revision == fake.revision


def test_status(certs, gateway):
    url, fake = gateway()
    _fill(fake)
    with _client(certs, url) as client:
        status = client.status()
    assert status["endpoint"] == url and status["version"] == "3.6.16"
    assert status["revision"] == fake.revision and status["db_size"] == 4096


def test_a_dropped_keep_alive_connection_is_reopened(certs, gateway):
    url, fake = gateway()
    _fill(fake)
    fake.drop_connections = True
    with _client(certs, url) as client:
        assert len(list(client.range_iter("/registry/secrets/", page_size=1))) == 7


def test_plain_http_endpoint(gateway):
    url, fake = gateway(tls=False)
    _fill(fake)
    with EtcdClient([url], timeout=5) as client:
        assert client.get("/registry/secrets/default/a") == b"k8s\x00value-a"


@pytest.mark.parametrize("prefix, end", [
    (b"/registry/secrets/", b"/registry/secrets0"),
    (b"a\xff", b"b"),
    (b"a\xff\xff", b"b"),
    (b"\xff\xff", b"\x00"),
    (b"", b"\x00"),
])
def test_prefix_range_end(prefix, end):
    assert prefix_range_end(prefix) == end


# ---------------------------------------------------------------------------
# Failover and errors


def test_fails_over_past_an_unreachable_endpoint_and_stays_on_the_one_that_answers(certs, gateway):
    url, fake = gateway()
    _fill(fake)
    dead = _closed_port()
    with _client(certs, dead, url) as client:
        assert client.get("/registry/secrets/default/a") == b"k8s\x00value-a"
        assert client.endpoint == url
        assert len(list(client.range_iter("/registry/secrets/", page_size=2))) == 7


def test_fails_over_past_an_unavailable_member(certs, gateway):
    sick_url, sick = gateway()
    sick.unavailable = True
    url, fake = gateway()
    _fill(fake)
    with _client(certs, sick_url, url) as client:
        assert client.status()["endpoint"] == url


def test_no_endpoint_answers_names_every_endpoint(certs):
    first, second = _closed_port(), _closed_port()
    with pytest.raises(EtcdError) as caught:
        _client(certs, first, second).status()
    message = str(caught.value)
    assert "no etcd endpoint answered" in message
    assert "%s: connection refused" % first in message and "%s: connection refused" % second in message
    assert [url for url, _error in caught.value.attempts] == [first, second]


def test_one_unreachable_endpoint_is_named(certs):
    dead = _closed_port()
    with pytest.raises(EtcdError, match="etcd at %s: connection refused" % dead) as caught:
        _client(certs, dead).get("/x")
    assert caught.value.endpoint == dead


def test_server_certificate_from_another_ca_is_a_tls_error(certs, gateway):
    url, _fake = gateway(server_pair=certs["other_server"])
    with pytest.raises(EtcdError, match=r"etcd at %s: TLS: the server certificate was not accepted .*etcd_ca_cert"
                       % url):
        _client(certs, url).status()


def test_missing_client_certificate_says_to_set_one(certs, gateway):
    url, _fake = gateway()
    with pytest.raises(EtcdError, match=r"etcd at %s: TLS: .*set etcd_cert and etcd_key" % url):
        EtcdClient([url], certs["ca"], timeout=5).status()


def test_client_certificate_from_another_ca_is_rejected(certs, gateway):
    url, _fake = gateway()
    cert, key = certs["other_client"]
    # TLS 1.3: an alert or a bare EOF, depending on timing; both are explained.
    with pytest.raises(EtcdError, match=r"etcd at %s: TLS: etcd .*accept the client certificate .*check etcd_cert"
                       % url):
        EtcdClient([url], certs["ca"], cert, key, timeout=5).status()


def test_compacted_revision_explains_itself(certs, gateway):
    url, fake = gateway()
    _fill(fake)
    fake.compacted = 6
    with pytest.raises(EtcdError, match=r"refused the request: .*compacted.*run it again"):
        list(_client(certs, url).range_iter("/registry/secrets/", revision=3))


def test_a_url_without_gateway_is_explained(certs, gateway):
    url, fake = gateway()
    fake.answer = (404, b"404 page not found\n")
    with pytest.raises(EtcdError, match="no v3 JSON gateway"):
        _client(certs, url).status()


def test_an_answer_that_is_not_json_is_explained(certs, gateway):
    url, fake = gateway()
    fake.answer = (200, b"<html>")
    with pytest.raises(EtcdError, match="not JSON"):
        _client(certs, url).status()


def test_missing_files_name_the_option(certs, tmp_path):
    missing = str(tmp_path / "missing.crt")
    with pytest.raises(EtcdError, match="etcd_ca_cert %s does not exist" % missing):
        EtcdClient(["https://127.0.0.1:2379"], missing)
    with pytest.raises(EtcdError, match="etcd_key %s does not exist" % missing):
        EtcdClient(["https://127.0.0.1:2379"], certs["ca"], certs["client"][0], missing)


def test_mismatched_certificate_and_key(certs):
    with pytest.raises(EtcdError, match="not a matching PEM certificate and unencrypted key"):
        EtcdClient(["https://127.0.0.1:2379"], certs["ca"], certs["client"][0], certs["other_client"][1])


def test_certificate_without_key(certs):
    with pytest.raises(EtcdError, match="together"):
        EtcdClient(["https://127.0.0.1:2379"], certs["ca"], certs["client"][0], None)


@pytest.mark.parametrize("endpoints, message", [
    ([], "no etcd endpoint"),
    (["unix:///run/etcd.sock"], "only https:// and http://"),
    (["https://127.0.0.1:port"], "port is not a number"),
])
def test_bad_endpoints(endpoints, message):
    with pytest.raises(EtcdError, match=message):
        EtcdClient(endpoints)


@pytest.mark.parametrize("timeout", [0, -1, None])
def test_timeout_must_be_positive(timeout):
    with pytest.raises(EtcdError, match="etcd_timeout must be a positive number"):
        EtcdClient(["http://127.0.0.1:2379"], timeout=timeout)


def test_endpoint_urls_are_normalized(certs):
    client = EtcdClient(["10.0.0.1", " https://[fd00::1]:2379 ", "http://etcd.example:12379"], certs["ca"])
    assert [endpoint.url for endpoint in client._endpoints] == [
        "https://10.0.0.1:2379", "https://[fd00::1]:2379", "http://etcd.example:12379"]


# ---------------------------------------------------------------------------
# Argument spec


def test_argument_spec_names_and_environment_fallbacks(monkeypatch, certs):
    spec = etcd_argument_spec()
    assert sorted(spec) == ["etcd_ca_cert", "etcd_cert", "etcd_endpoints", "etcd_key", "etcd_timeout"]
    assert spec["etcd_key"]["no_log"] is False and spec["etcd_key"]["type"] == "path"
    assert spec["etcd_timeout"]["default"] == 30
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "https://10.0.0.1:2379,https://10.0.0.2:2379")
    monkeypatch.setenv("ETCDCTL_CACERT", certs["ca"])
    monkeypatch.setenv("ETCDCTL_CERT", certs["client"][0])
    monkeypatch.setenv("ETCDCTL_KEY", certs["client"][1])
    result = ArgumentSpecValidator(spec).validate({})
    assert result.error_messages == []
    params = result.validated_parameters
    assert params["etcd_endpoints"] == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert params["etcd_key"] == certs["client"][1]
    client = client_from_params(params)
    assert client.endpoint == "https://10.0.0.1:2379"


def test_argument_spec_requires_endpoints(monkeypatch):
    monkeypatch.delenv("ETCDCTL_ENDPOINTS", raising=False)
    result = ArgumentSpecValidator(etcd_argument_spec()).validate({})
    assert "etcd_endpoints" in " ".join(result.error_messages)
