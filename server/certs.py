"""The federation's certificates, made with ``cryptography`` (the command is ``fedge-certs``).

One run writes, into a directory::

    ca.pem, ca.key            the federation's certificate authority (keep ca.key offline)
    server.pem, server.key    the server's TLS certificate (serverAuth, SANs for its hosts)
    signing.pem, signing.key  the server's Ed25519 model-signing key (codeSigning)
    devices/<id>.pem, .key    one TLS client certificate per device (clientAuth, CN = id)

Run it again on the same directory to issue more devices with the existing CA. TLS
keys are ECDSA P-256 (what every gRPC TLS stack accepts); private keys are written
with mode 0600. The server takes a device's identity from its certificate's common
name, so a device id must be unique and is checked to be a short, plain name.

:func:`client_identity` is the server's own check of a certificate the TLS handshake
already verified against the CA: it must be issued for client authentication (the
clientAuth extended key usage, which the server and signing certificates lack), carry
exactly one common name that is a plain device id, and, if it has subject alternative
names, name that device among them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertDir:
    """Where ``fedge-certs`` puts each file under ``root``."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def signing(self) -> Path:
        return self.root / "signing.pem"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing.key"

    def device(self, device_id: str) -> Path:
        return self.root / "devices" / f"{device_id}.pem"

    def device_key(self, device_id: str) -> Path:
        return self.root / "devices" / f"{device_id}.key"


def check_device_id(device_id: str) -> str:
    """``device_id`` if it is a plain name (letters, digits, ``._-``, <= 64 chars)."""
    if not DEVICE_ID.match(device_id):
        raise ValueError(
            f"device id {device_id!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return device_id


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedge"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _write_key(path: Path, key: PrivateKeyTypes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(
    subject: str,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    # Ed25519 keys sign without a separate hash algorithm.
    algorithm = None if isinstance(issuer_key, Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


def _load_ca(paths: CertDir) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{paths.ca_key} holds a {type(key).__name__}, not the EC key fedge-certs makes")
    return cert, key


def create_federation(root: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 365) -> CertDir:
    """A new CA, server certificate (SANs ``hosts``) and signing key in ``root``.

    Refuses to overwrite an existing CA.
    """
    paths = CertDir(Path(root))
    if paths.ca.exists():
        raise FileExistsError(f"{paths.ca} exists: issue devices with the existing CA or choose another directory")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("fedge CA", ca_key.public_key(), None, ca_key, days * 10, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        hosts[0] if hosts else "fedge server", server_key.public_key(), ca, ca_key, days,
        usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=hosts,
    )
    signing_key = Ed25519PrivateKey.generate()
    signing = _issue(
        "fedge model signing", signing_key.public_key(), ca, ca_key, days, usage=ExtendedKeyUsageOID.CODE_SIGNING
    )
    for path, key in ((paths.ca_key, ca_key), (paths.server_key, server_key), (paths.signing_key, signing_key)):
        _write_key(path, key)
    for path, cert in ((paths.ca, ca), (paths.server, server), (paths.signing, signing)):
        _write_cert(path, cert)
    return paths


def issue_devices(root: Path, device_ids: list[str], days: int = 365) -> CertDir:
    """A TLS client certificate (CN = id) per device, issued by the CA in ``root``."""
    for device_id in device_ids:
        check_device_id(device_id)
    for device_id in device_ids:
        issue_certificate(root, device_id)
    return CertDir(Path(root))


def issue_certificate(
    root: Path,
    name: str,
    *,
    usage: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
    hosts: tuple[str, ...] = (),
    days: int = 365,
) -> CertDir:
    """One certificate with common name ``name`` (any usage, optional SANs ``hosts``),
    issued by the CA in ``root`` and written as ``devices/<name>.pem/.key``.

    :func:`issue_devices` is the normal way; this one also makes the odd certificates
    that tests of the server's own checks need (wrong usage, mismatching names).
    """
    paths = CertDir(Path(root))
    ca, ca_key = _load_ca(paths)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(name, key.public_key(), ca, ca_key, days, usage=usage, hosts=hosts)
    _write_key(paths.device_key(name), key)
    _write_cert(paths.device(name), cert)
    return paths


class CertificateRefused(ValueError):
    """A client certificate the federation does not accept as a device; says why."""


def client_identity(pem: bytes) -> str:
    """The device id a verified client certificate ``pem`` proves; :class:`CertificateRefused` otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateRefused(f"unreadable client certificate: {exc}") from None
    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise CertificateRefused("the certificate is not issued for client authentication (no clientAuth usage)")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise CertificateRefused(f"the certificate has {len(names)} common names, a device certificate has one")
    device_id = str(names[0].value)
    try:
        check_device_id(device_id)
    except ValueError as exc:
        raise CertificateRefused(str(exc)) from None
    try:
        alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return device_id
    dns = alternatives.get_values_for_type(x509.DNSName)
    if device_id not in dns:
        raise CertificateRefused(
            f"the certificate's alternative names {dns} do not include its common name {device_id!r}"
        )
    return device_id
