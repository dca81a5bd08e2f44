"""Certificates for the control plane's mutual TLS: a private CA, a server and a client certificate.

    from stemedge.control.certs import make_certificates
    paths = make_certificates("~/.stemedge/tls", hosts=["microscope-pc", "127.0.0.1"])

Give the server ``ca.pem``, ``server.pem`` and ``server.key``; give each client ``ca.pem``,
``client.pem`` and ``client.key`` (and the token). Keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CertificatePaths", "make_certificates"]


class CertificatePaths:
    """File names inside one directory made by :func:`make_certificates`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        d = Path(directory).expanduser()
        self.directory = d
        self.ca = d / "ca.pem"
        self.server_cert = d / "server.pem"
        self.server_key = d / "server.key"
        self.client_cert = d / "client.pem"
        self.client_key = d / "client.key"


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, private: bool) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def make_certificates(
    directory: str | os.PathLike,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
    client_name: str = "stemedge-client",
) -> CertificatePaths:
    """Create a CA and a server and a client certificate signed by it (ECDSA P-256).

    ``hosts`` become the server certificate's subject alternative names (DNS names or IP
    addresses the clients connect to).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    paths = CertificatePaths(directory)
    paths.directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    until = now + datetime.timedelta(days=int(days))

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("stemedge control CA"))
        .issuer_name(name("stemedge control CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage, sans=None):
        key = _key()
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    server_key, server = leaf(str(hosts[0]), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client_key, client = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH)

    pem = serialization.Encoding.PEM
    raw = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    _write(paths.ca, ca.public_bytes(pem), False)
    _write(paths.server_cert, server.public_bytes(pem), False)
    _write(paths.server_key, server_key.private_bytes(pem, raw, none), True)
    _write(paths.client_cert, client.public_bytes(pem), False)
    _write(paths.client_key, client_key.private_bytes(pem, raw, none), True)
    return paths
