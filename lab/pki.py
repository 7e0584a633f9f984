"""Certificates for the lab, shaped like the ones kubeadm generates.

Three CAs (kubernetes, etcd, front-proxy), per-node etcd server and peer
certificates, per-node apiserver serving certificates with SANs for the node
IP, the load balancer IP and localhost, the apiserver's etcd client
certificate, an admin client certificate in system:masters and the
service-account key pair.  ECDSA P-256 keeps generation fast; the service
account key is RSA like kubeadm's.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)


def _name(common_name, organization=None):
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


class Authority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, common_name):
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY * 10)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self):
        return _cert_pem(self.cert)

    @property
    def key_pem(self):
        return _key_pem(self.key)

    def issue(self, common_name, organization=None, server=False, client=False, dns=(), ips=()):
        """Return (cert_pem, key_pem) for a leaf certificate."""
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        alt_names = [x509.DNSName(name) for name in dns] + [
            x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips
        ]
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)


def write_private(path, data):
    """Write key material 0600 (created that way, never wider)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_public(path, data):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def write_pair(directory, stem, pair):
    cert_pem, key_pem = pair
    write_public(os.path.join(directory, stem + ".crt"), cert_pem)
    write_private(os.path.join(directory, stem + ".key"), key_pem)


def service_account_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _key_pem(key), public


def generate(lab_dir, nodes, lb_ip):
    """Generate the lab PKI.

    ``nodes`` is a list of (name, ip).  Shared files land in ``<lab>/pki``;
    each node gets a kubeadm-shaped ``etc/kubernetes/pki`` directory.
    """
    kube_ca = Authority("kubernetes")
    etcd_ca = Authority("etcd-ca")
    proxy_ca = Authority("front-proxy-ca")
    sa_key, sa_pub = service_account_keys()
    shared = os.path.join(lab_dir, "pki")

    write_public(os.path.join(shared, "ca.crt"), kube_ca.cert_pem)
    write_public(os.path.join(shared, "etcd-ca.crt"), etcd_ca.cert_pem)
    write_pair(shared, "admin", kube_ca.issue("kubernetes-admin", "system:masters", client=True))
    write_pair(shared, "etcd-client", etcd_ca.issue("kubecrypt-lab-etcd-client", client=True))

    admin_pair = kube_ca.issue("kubernetes-admin", "system:masters", client=True)
    for name, ip in nodes:
        pki = os.path.join(lab_dir, "nodes", name, "etc", "kubernetes", "pki")
        for stem, authority in (("ca", kube_ca), ("front-proxy-ca", proxy_ca)):
            write_public(os.path.join(pki, stem + ".crt"), authority.cert_pem)
            write_private(os.path.join(pki, stem + ".key"), authority.key_pem)
        write_public(os.path.join(pki, "etcd", "ca.crt"), etcd_ca.cert_pem)
        write_private(os.path.join(pki, "etcd", "ca.key"), etcd_ca.key_pem)
        write_private(os.path.join(pki, "sa.key"), sa_key)
        write_public(os.path.join(pki, "sa.pub"), sa_pub)
        write_pair(pki, "apiserver", kube_ca.issue(
            "kube-apiserver", server=True,
            dns=("localhost", name, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"),
            ips=(ip, lb_ip, "127.0.0.1", "10.96.0.1"),
        ))
        write_pair(pki, "apiserver-etcd-client", etcd_ca.issue("kube-apiserver-etcd-client", client=True))
        write_pair(pki, "apiserver-kubelet-client", kube_ca.issue(
            "kube-apiserver-kubelet-client", "kubeadm:cluster-admins", client=True))
        write_pair(pki, "front-proxy-client", proxy_ca.issue("front-proxy-client", client=True))
        write_pair(os.path.join(pki, "etcd"), "server", etcd_ca.issue(
            name, server=True, client=True, dns=("localhost", name), ips=(ip, "127.0.0.1")))
        write_pair(os.path.join(pki, "etcd"), "peer", etcd_ca.issue(
            name, server=True, client=True, dns=("localhost", name), ips=(ip, "127.0.0.1")))
        write_pair(os.path.join(pki, "etcd"), "healthcheck-client", etcd_ca.issue(
            "kube-etcd-healthcheck-client", client=True))
        write_pair(os.path.join(lab_dir, "nodes", name, "pki-admin"), "admin", admin_pair)
    return kube_ca
