"""The data plane's TLS listener, as an attacker's scanner and a certificate rotation see it.

- `sslyze` (the scanner, driving its own OpenSSL builds that still speak SSL 2.0 to TLS 1.1) finds TLS 1.2 and 1.3
  only, AEAD suites with forward secrecy only, the whole certificate chain served in order, no compression, no
  client-initiated renegotiation, and none of the classic implementation bugs (Heartbleed, CCS injection, ROBOT).
  ALPN is checked with Python's `ssl`: h2 and http/1.1 offered, nothing else.
- Hot certificate reload: the files are replaced on disk (as cert-manager or a Fly rotation does) and new
  connections get the new certificate without a restart, while a connection made before keeps working; a broken
  replacement is rejected, logged and counted, and the previous certificate keeps serving.

Certificates are made here with `cryptography`: a test CA, an intermediate, and leaves for `localhost`."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sslyze import (
    CertificateInfoExtraArgument,
    RobotScanResultEnum,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)

from harness import Dataplane, StartDataplane, World, wait_until

# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def issue(name: str, issuer: Issued | None = None, *, ca: bool = False) -> Issued:
    """A P-256 certificate for `name`, signed by `issuer` (self-signed without one); a CA if `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass
class Pki:
    root: Issued
    intermediate: Issued
    ca_file: Path

    def leaf(self) -> Issued:
        return issue("localhost", self.intermediate)

    def chain_pem(self, leaf: Issued) -> bytes:
        """What a server sends: the leaf, then the intermediate (never the root)."""
        return leaf.pem + self.intermediate.pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = issue("Molt test root", ca=True)
    intermediate = issue("Molt test intermediate", root, ca=True)
    ca_file = tmp_path_factory.mktemp("pki") / "root.pem"
    ca_file.write_bytes(root.pem)
    return Pki(root, intermediate, ca_file)


def write_pair(cert_file: Path, key_file: Path, chain: bytes, key: bytes) -> None:
    """Replace both files whole (temp file + rename), key first, as rotation tools do."""
    for path, data in ((key_file, key), (cert_file, chain)):
        staging = path.with_name(path.name + ".new")
        staging.write_bytes(data)
        os.replace(staging, path)


def tls_dataplane(start_dataplane: StartDataplane, world: World, tmp_path: Path, pki: Pki, leaf: Issued) -> Dataplane:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir(parents=True)
    cert_file, key_file = tls_dir / "cert.pem", tls_dir / "key.pem"
    write_pair(cert_file, key_file, pki.chain_pem(leaf), leaf.key_pem)
    config = world.config(tmp_path / "config")
    config["server"]["tls"].update(cert_file=str(cert_file), key_file=str(key_file), self_signed=False)
    return start_dataplane(config)


def tls_address(dataplane: Dataplane) -> tuple[str, int]:
    host, port = dataplane.listeners["https"].rsplit(":", 1)
    return host, int(port)


def client_context(pki: Pki, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def served_fingerprint(dataplane: Dataplane, pki: Pki) -> str:
    """The SHA-256 of the leaf certificate a new connection is given (verified against the test root)."""
    with (
        socket.create_connection(tls_address(dataplane), timeout=5) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------------

SCANS = {
    ScanCommand.SSL_2_0_CIPHER_SUITES,
    ScanCommand.SSL_3_0_CIPHER_SUITES,
    ScanCommand.TLS_1_0_CIPHER_SUITES,
    ScanCommand.TLS_1_1_CIPHER_SUITES,
    ScanCommand.TLS_1_2_CIPHER_SUITES,
    ScanCommand.TLS_1_3_CIPHER_SUITES,
    ScanCommand.CERTIFICATE_INFO,
    ScanCommand.TLS_COMPRESSION,
    ScanCommand.SESSION_RENEGOTIATION,
    ScanCommand.HEARTBLEED,
    ScanCommand.OPENSSL_CCS_INJECTION,
    ScanCommand.ROBOT,
    ScanCommand.TLS_FALLBACK_SCSV,
    ScanCommand.TLS_1_3_EARLY_DATA,
    ScanCommand.TLS_EXTENDED_MASTER_SECRET,
    ScanCommand.ELLIPTIC_CURVES,
}

# Suites a TLS 1.2 client may be offered: ECDHE key exchange (forward secrecy) and an AEAD cipher.
STRONG_TLS12 = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
TLS13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


# sslyze's own bundled trust stores hold a root with a zero serial number; cryptography warns when it loads them.
@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
def test_sslyze_finds_modern_tls_only(
    start_dataplane: StartDataplane,
    world: World,
    tmp_path: Path,
    pki: Pki,
    record_property: Callable[[str, object], None],
) -> None:
    leaf = pki.leaf()
    dataplane = tls_dataplane(start_dataplane, world, tmp_path, pki, leaf)
    host, port = tls_address(dataplane)
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname="localhost", port=port, ip_address=host),
        scan_commands=SCANS,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=pki.ca_file)
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    scans = result.scan_result
    assert scans is not None

    def ok(attempt: Any) -> Any:  # sslyze has one attempt type per scan command
        assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, attempt.error_trace
        return attempt.result

    # Protocols: nothing below TLS 1.2 is accepted at all.
    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        accepted = ok(getattr(scans, f"{old}_cipher_suites")).accepted_cipher_suites
        assert not accepted, f"{old} accepted: {[s.cipher_suite.name for s in accepted]}"
    tls12 = {s.cipher_suite.name for s in ok(scans.tls_1_2_cipher_suites).accepted_cipher_suites}
    tls13 = {s.cipher_suite.name for s in ok(scans.tls_1_3_cipher_suites).accepted_cipher_suites}
    assert tls12 and tls12 <= STRONG_TLS12, f"TLS 1.2 suites beyond ECDHE+AEAD: {tls12 - STRONG_TLS12}"
    assert tls13 == TLS13, tls13
    curves = ok(scans.elliptic_curves)
    assert curves.supports_ecdh_key_exchange

    # The chain: leaf then intermediate, in order, without the root, verifying to the test root.
    (deployment,) = ok(scans.certificate_info).certificate_deployments
    received = [c.fingerprint(hashes.SHA256()).hex() for c in deployment.received_certificate_chain]
    assert received == [leaf.fingerprint, pki.intermediate.fingerprint]
    assert deployment.received_chain_has_valid_order
    assert deployment.received_chain_contains_anchor_certificate is False
    custom = [r for r in deployment.path_validation_results if r.trust_store.path == pki.ca_file]
    assert custom and custom[0].was_validation_successful, "the chain served does not verify to the test root"

    # Known attacks and risky features.
    assert not ok(scans.tls_compression).supports_compression  # CRIME
    renegotiation = ok(scans.session_renegotiation)
    assert not renegotiation.is_vulnerable_to_client_renegotiation_dos
    assert not ok(scans.heartbleed).is_vulnerable_to_heartbleed
    assert not ok(scans.openssl_ccs_injection).is_vulnerable_to_ccs_injection
    assert ok(scans.robot).robot_result in (
        RobotScanResultEnum.NOT_VULNERABLE_NO_ORACLE,
        RobotScanResultEnum.NOT_VULNERABLE_RSA_NOT_SUPPORTED,
    )
    assert not ok(scans.tls_1_3_early_data).supports_early_data  # 0-RTT replays
    assert ok(scans.tls_extended_master_secret).supports_ems_extension

    # What sslyze says about the rest, for the record (pytest -rA, or the junit XML).
    findings = {
        "tls_1_2_suites": sorted(tls12),
        "tls_1_3_suites": sorted(tls13),
        "curves": sorted(c.name for c in curves.supported_curves or []),
        "secure_renegotiation": renegotiation.supports_secure_renegotiation,
        "client_renegotiation_accepted": renegotiation.is_vulnerable_to_client_renegotiation_dos,
        "fallback_scsv": ok(scans.tls_fallback_scsv).supports_fallback_scsv,
    }
    record_property("sslyze", json.dumps(findings))
    print("sslyze findings:", json.dumps(findings, indent=2))


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (["h2"], "h2"), (["spdy/3", "http/1.1"], "http/1.1")],
)
def test_alpn_offers_h2_and_http11(
    start_dataplane: StartDataplane, world: World, tmp_path: Path, pki: Pki, offered: list[str], chosen: str
) -> None:
    dataplane = tls_dataplane(start_dataplane, world, tmp_path, pki, pki.leaf())
    with (
        socket.create_connection(tls_address(dataplane), timeout=5) as raw,
        client_context(pki, offered).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == chosen
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


# --------------------------------------------------------------------------------------------
# Hot certificate reload
# --------------------------------------------------------------------------------------------


def _get_models(tls: ssl.SSLSocket, key: str) -> int:
    """GET /v1/models on an open HTTP/1.1 keep-alive connection; the status."""
    tls.sendall(f"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, "the connection was closed"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += tls.recv(65536)
    return int(head.split(b" ")[1])


def test_a_renewed_certificate_is_served_without_a_restart(
    start_dataplane: StartDataplane, world: World, tmp_path: Path, pki: Pki
) -> None:
    cert_a, cert_b, cert_c = pki.leaf(), pki.leaf(), pki.leaf()
    dataplane = tls_dataplane(start_dataplane, world, tmp_path, pki, cert_a)
    cert_file, key_file = dataplane.cert_file, tmp_path / "tls" / "key.pem"
    assert cert_file is not None
    key = world.full_key.secret
    assert served_fingerprint(dataplane, pki) == cert_a.fingerprint
    pid = dataplane.process.pid

    with (
        socket.create_connection(tls_address(dataplane), timeout=5) as raw,
        client_context(pki, ["http/1.1"]).wrap_socket(raw, server_hostname="localhost") as before,
    ):
        assert _get_models(before, key) == 200

        # Renewed: both files replaced on disk. New connections get B; the open one goes on, still under A.
        write_pair(cert_file, key_file, pki.chain_pem(cert_b), cert_b.key_pem)
        wait_until(lambda: served_fingerprint(dataplane, pki) == cert_b.fingerprint, "the renewed certificate", 10)
        assert _get_models(before, key) == 200
        held = before.getpeercert(binary_form=True)
        assert held is not None and hashlib.sha256(held).hexdigest() == cert_a.fingerprint
        assert dataplane.metric_value("molt_tls_certificate_reloads_total") == 1
        assert dataplane.metric_value("molt_tls_certificate_expiry_timestamp_seconds") == int(
            cert_b.cert.not_valid_after_utc.timestamp()
        )

        # Broken replacements: C's certificate with B's key, then a truncated certificate. Each is rejected,
        # counted and logged; B keeps serving.
        for n, (chain, key_pem) in enumerate(
            [(pki.chain_pem(cert_c), cert_b.key_pem), (pki.chain_pem(cert_c)[:200], cert_c.key_pem)], start=1
        ):
            write_pair(cert_file, key_file, chain, key_pem)
            wait_until(
                lambda n=n: dataplane.metric_value("molt_tls_certificate_reload_failures_total") == n,
                f"rejected replacement {n}",
                10,
            )
            assert served_fingerprint(dataplane, pki) == cert_b.fingerprint
        assert _get_models(before, key) == 200
        rejected = [line for line in dataplane.logs().splitlines() if "TLS certificate reload rejected" in line]
        assert len(rejected) == 2, rejected

        # Fixed in place, then asked for by SIGHUP as well: C is served, by the same process.
        write_pair(cert_file, key_file, pki.chain_pem(cert_c), cert_c.key_pem)
        dataplane.process.send_signal(signal.SIGHUP)
        wait_until(lambda: served_fingerprint(dataplane, pki) == cert_c.fingerprint, "the fixed certificate", 10)
        assert _get_models(before, key) == 200

    assert dataplane.process.alive() and dataplane.process.pid == pid
    assert dataplane.metric_value("molt_tls_certificate_reload_failures_total") == 2
