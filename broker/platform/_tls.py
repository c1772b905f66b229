"""A local certificate authority and the Kafka node's certificate, made with ``cryptography``.

The local Kafka's client listener is TLS (with SCRAM-SHA-512 on top) and its controller
listener is mutual TLS, so the node needs one certificate that is both a server and a client
certificate. Kafka reads PEM key stores directly (``ssl.keystore.type=PEM``), so no Java
keystore tooling is needed. Pure apart from :func:`write_tls_material`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker._durable import replace_whole

#: Subject CN of the node certificate; Kafka names the controller-listener principal after it.
NODE_COMMON_NAME = "tiaki-kafka-node"
NODE_PRINCIPAL = f"User:CN={NODE_COMMON_NAME}"

_CA_DAYS = 3650
_NODE_DAYS = 397
#: A renewal keeps the CA while it outlives a new node certificate by this much.
CA_MARGIN = dt.timedelta(days=_NODE_DAYS + 30)
_CA_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tiaki local development"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Tiaki local CA"),
    ]
)
_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8
_PLAIN = serialization.NoEncryption()


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes for the CA certificate, the CA key and the node key store (key + chain)."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    node_keystore_pem: bytes


@dataclass(frozen=True)
class TlsPaths:
    ca_cert: Path
    ca_key: Path
    node_keystore: Path

    @classmethod
    def under(cls, folder: Path) -> TlsPaths:
        return cls(folder / "ca.pem", folder / "ca-key.pem", folder / "node-keystore.pem")


def make_tls_material(
    now: dt.datetime, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> TlsMaterial:
    """Create a fresh CA and a node certificate for ``hosts`` valid from ``now``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    start = now - dt.timedelta(minutes=5)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_CA_NAME)
        .issuer_name(_CA_NAME)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_key_pem = ca_key.private_bytes(_PEM, _PKCS8, _PLAIN)
    return renew_node_certificate(ca_cert.public_bytes(_PEM), ca_key_pem, now, hosts)


def renew_node_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    now: dt.datetime,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> TlsMaterial:
    """A new node key and certificate for ``hosts``, valid from ``now``, issued by the CA
    given: every client's copy of the CA certificate (``ssl_cafile``) stays valid."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the local CA key is not an EC key")
    node_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    start = now - dt.timedelta(minutes=5)
    node_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NODE_COMMON_NAME)]))
        .issuer_name(ca_cert.subject)
        .public_key(node_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(now + dt.timedelta(days=_NODE_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsMaterial(
        ca_cert_pem=ca_cert_pem,
        ca_key_pem=ca_key_pem,
        node_keystore_pem=(
            node_key.private_bytes(_PEM, _PKCS8, _PLAIN)
            + node_cert.public_bytes(_PEM)
            + ca_cert_pem
        ),
    )


def node_certificate_expires(keystore_pem: bytes) -> dt.datetime:
    """The ``not_valid_after`` of the node certificate in a PEM key store."""
    return x509.load_pem_x509_certificates(keystore_pem)[0].not_valid_after_utc


def ca_problem(ca_cert_pem: bytes, ca_key_pem: bytes, now: dt.datetime) -> str | None:
    """Why this CA cannot issue a renewed node certificate, or None if it can: its key must
    be the certificate's, and it must outlive a new node certificate (:data:`CA_MARGIN`)."""
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_pem)
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except ValueError:
        return "its certificate or key does not parse"
    raw = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        return "its key is not its certificate's"
    if cert.not_valid_after_utc - now <= CA_MARGIN:
        return "it would expire before a new node certificate"
    return None


def write_tls_material(paths: TlsPaths, material: TlsMaterial) -> None:
    """Write the material, each file whole (a temporary file renamed into place), private
    keys readable by their owner only. A file that already holds the same bytes is left as
    it is (a renewal never rewrites the CA key), and the CA key goes before the CA
    certificate: an interrupted write leaves at worst a key that is not its certificate's,
    which :func:`ca_problem` notices, never a truncated key."""
    paths.ca_cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, data, mode in (
        (paths.ca_key, material.ca_key_pem, 0o600),
        (paths.node_keystore, material.node_keystore_pem, 0o600),
        (paths.ca_cert, material.ca_cert_pem, 0o644),
    ):
        if not (path.exists() and path.read_bytes() == data):
            replace_whole(path, data, mode)
