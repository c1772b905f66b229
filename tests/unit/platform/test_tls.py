from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker.platform._tls import (
    NODE_COMMON_NAME,
    TlsPaths,
    make_tls_material,
    node_certificate_expires,
    write_tls_material,
)

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def test_node_certificate_is_signed_by_the_ca_for_loopback_server_and_client_use() -> None:
    material = make_tls_material(NOW)
    ca = x509.load_pem_x509_certificate(material.ca_cert_pem)
    node, chain_ca = x509.load_pem_x509_certificates(material.node_keystore_pem)
    assert chain_ca == ca
    node.verify_directly_issued_by(ca)
    assert node.subject.rfc4514_string() == f"CN={NODE_COMMON_NAME}"
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = set(node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert node_certificate_expires(material.node_keystore_pem) > NOW + dt.timedelta(days=365)
    assert isinstance(node.public_key(), ec.EllipticCurvePublicKey)


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    paths = TlsPaths.under(tmp_path / "tls")
    write_tls_material(paths, make_tls_material(NOW))
    for private in (paths.ca_key, paths.node_keystore):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_cert.parent.stat().st_mode) == 0o700
    assert b"PRIVATE KEY" not in paths.ca_cert.read_bytes()
