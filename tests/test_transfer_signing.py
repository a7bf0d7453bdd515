"""Chunked transfers, task signatures and fedge-certs (issue 5)."""

import os

import pytest

from fedge.protos.signing import SignatureError, TaskVerifier, load_private_key, sign_task
from fedge.protos.transfer import (
    GRPC_MESSAGE_PREFIX_BYTES,
    Reassembler,
    TransferError,
    chunks,
    digest,
    reassemble,
    wire_bytes,
)
from fedge.protos.v1 import federation_pb2 as fpb
from fedge.server.certs import CertDir, create_federation, issue_devices
from fedge.server.certs_cli import main as certs_main


def test_chunks_round_trip_and_sizes():
    payload = os.urandom(10_000)
    messages = list(chunks(payload, "t1", chunk_bytes=4096))
    assert [m.WhichOneof("part") for m in messages] == ["header", "data", "data", "data"]
    assert [len(m.data) for m in messages[1:]] == [4096, 4096, 1808]
    got = reassemble(messages, max_bytes=10_000)
    assert got.payload == payload and got.header.task_id == "t1"
    assert wire_bytes(messages) == sum(m.ByteSize() for m in messages) + 4 * GRPC_MESSAGE_PREFIX_BYTES


def test_empty_payload_is_one_header():
    messages = list(chunks(b"", "t"))
    assert len(messages) == 1
    assert reassemble(messages, 0).payload == b""


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ms: ms[1:], "before the transfer header"),
        (lambda ms: ms[:2], "ended after"),
        (lambda ms: [ms[0], *ms[1:], fpb.Chunk(data=b"x")], "more data than"),
        (lambda ms: [ms[0], ms[0], *ms[1:]], "second header"),
        (lambda ms: [ms[0], fpb.Chunk(data=b"y" * 100), *ms[2:]], "SHA-256"),
        (lambda ms: [ms[0], fpb.Chunk(), *ms[1:]], "empty chunk"),
    ],
)
def test_inconsistent_transfers_are_refused(mutate, message):
    messages = list(chunks(b"z" * 300, "t", chunk_bytes=100))
    with pytest.raises(TransferError, match=message):
        reassemble(mutate(messages), max_bytes=1000)


def test_oversize_transfer_is_refused_at_the_header():
    joiner = Reassembler(max_bytes=99)
    with pytest.raises(TransferError, match="exceeds the limit of 99"):
        joiner.add(next(chunks(b"a" * 100, "t")))


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    create_federation(root)
    issue_devices(root, ["dev-a"])
    rogue = tmp_path_factory.mktemp("rogue")
    create_federation(rogue)
    return CertDir(root), CertDir(rogue)


def test_signature_verifies_and_tampering_is_refused(federation):
    paths, _ = federation
    verifier = TaskVerifier.from_certificate(paths.signing.read_bytes(), paths.ca.read_bytes())
    key = load_private_key(paths.signing_key.read_bytes())
    good = digest(b"task bytes")
    signature = sign_task(key, good)
    verifier.verify(good, signature)
    with pytest.raises(SignatureError, match="does not verify"):
        verifier.verify(digest(b"other task bytes"), signature)
    with pytest.raises(SignatureError, match="carries no signature"):
        verifier.verify(good, b"")


def test_signing_certificate_must_come_from_the_ca_and_be_for_code_signing(federation):
    paths, rogue = federation
    with pytest.raises(SignatureError, match="not issued by the CA"):
        TaskVerifier.from_certificate(rogue.signing.read_bytes(), paths.ca.read_bytes())
    with pytest.raises(SignatureError, match="not issued for code signing"):
        TaskVerifier.from_certificate(paths.device("dev-a").read_bytes(), paths.ca.read_bytes())


def test_fedge_certs_cli(tmp_path, capsys):
    out = tmp_path / "certs"
    assert certs_main([str(out), "--server-host", "edge.example", "--server-host", "10.1.2.3", "--devices", "2"]) == 0
    paths = CertDir(out)
    for path in (paths.ca, paths.server, paths.signing, paths.device("device-0"), paths.device_key("device-1")):
        assert path.is_file(), path
    assert oct(paths.device_key("device-0").stat().st_mode & 0o777) == "0o600"
    # a second run adds devices with the same CA and never replaces it
    ca_before = paths.ca.read_bytes()
    assert certs_main([str(out), "--device", "pi-kitchen"]) == 0
    assert paths.ca.read_bytes() == ca_before and paths.device("pi-kitchen").is_file()
    assert certs_main([str(out), "--device", "bad/name"]) == 2
    assert "device id 'bad/name'" in capsys.readouterr().err
    assert certs_main([str(out), "--server-host", "x"]) == 2
