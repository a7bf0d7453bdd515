"""Signed broadcasts: the server signs every Task it sends, the device verifies first.

The signature is Ed25519 (``cryptography``) over ``"fedge.v1.Task\\0" + SHA-256(Task
bytes)``: the exact serialised Task, so the model, the round config, the task id, the
round and the destination node are all covered, and a device in any language can
verify with the digest alone. The server's signing key has a certificate issued by
the federation's CA (``fedge-certs`` writes both) with the code-signing extended key
usage; a device trusts that certificate only after checking it against the CA it
already holds for TLS, so no extra key has to be provisioned.

Needs the ``cryptography`` package (the ``client`` extra).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID

#: Domain separation: a signature over a Task digest is never valid for anything else.
TASK_DOMAIN = b"fedge.v1.Task\x00"


class SignatureError(ValueError):
    """A signature or a signing certificate that does not verify; says why."""


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM; ``SignatureError`` for any other key."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"the signing key must be Ed25519, got {type(key).__name__}")
    return key


def sign_task(key: Ed25519PrivateKey, sha256: bytes) -> bytes:
    """The 64-byte signature of a Task whose serialised bytes have digest ``sha256``."""
    return key.sign(TASK_DOMAIN + sha256)


class TaskVerifier:
    """Checks Task signatures with a public key the device trusts."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self.public_key = public_key

    @classmethod
    def from_certificate(
        cls, certificate_pem: bytes, ca_pem: bytes, now: dt.datetime | None = None
    ) -> TaskVerifier:
        """Trust the key in ``certificate_pem`` if the CA issued it for code signing.

        Raises ``SignatureError`` when the certificate is not issued by the CA, is
        outside its validity period, lacks the code-signing usage or holds a key
        that is not Ed25519.
        """
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem)
            ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError as exc:
            raise SignatureError(f"cannot read the signing certificate or the CA: {exc}") from None
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise SignatureError(
                f"the signing certificate ({cert.subject.rfc4514_string()}) is not issued by the CA "
                f"({ca.subject.rfc4514_string()})"
            ) from None
        now = now or dt.datetime.now(dt.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SignatureError(
                f"the signing certificate is valid from {cert.not_valid_before_utc} to "
                f"{cert.not_valid_after_utc}, not now ({now})"
            )
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            code_signing = ExtendedKeyUsageOID.CODE_SIGNING in usages
        except x509.ExtensionNotFound:
            code_signing = False
        if not code_signing:
            raise SignatureError("the signing certificate is not issued for code signing")
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"the signing certificate holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    def verify(self, sha256: bytes, signature: bytes) -> None:
        """Raise ``SignatureError`` unless ``signature`` signs the Task digest ``sha256``."""
        if not signature:
            raise SignatureError("the task carries no signature")
        try:
            self.public_key.verify(signature, TASK_DOMAIN + sha256)
        except InvalidSignature:
            raise SignatureError("the task's signature does not verify with the server's signing key") from None
