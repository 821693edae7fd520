"""``baps-fed certs``: the keys and certificates of a pilot federation.

- ``ca.crt``/``ca.key``: a private certificate authority (keep ca.key offline after the pilot);
- ``server.crt``/``server.key``: the coordinator's (SuperLink's) TLS certificate, valid for the
  host names and IP addresses given (always localhost and 127.0.0.1);
- ``nodes/NAME`` + ``nodes/NAME.pub``: one ECDSA P-384 key pair per hospital in OpenSSH format,
  what Flower's node authentication expects (``flower-supernode --auth-supernode-private-key``,
  ``flwr supernode register NAME.pub``). Each hospital gets its private key and ``ca.crt``.
Every file is written with mode 0600 in folders of mode 0700 (this account's alone: copy
each hospital its two files). Existing files are never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from baps_fed.launch.private_files import private_dir


def _write(path: Path, data: bytes) -> None:
    if path.exists():
        raise FileExistsError(f"{path} exists; certs never overwrites keys (use a new folder)")
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_pilot_certs(out: Path, hosts: list[str], nodes: list[str], days: int = 365) -> list[Path]:
    """Write the CA, the server certificate and one key pair per node; returns the files."""
    if not nodes:
        raise ValueError("name at least one hospital (--nodes hospital-a hospital-b)")
    for n in nodes:
        if not n.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"node name {n!r}: use letters, digits, '-' and '_' only")
    files = make_server_certs(out, hosts, days)
    for node in nodes:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write(out / "nodes" / node, private)
        _write(out / "nodes" / f"{node}.pub", public + f" {node}\n".encode())
        files += [out / "nodes" / node, out / "nodes" / f"{node}.pub"]
    return files


def make_server_certs(out: Path, hosts: list[str], days: int = 365) -> list[Path]:
    """Write a private CA and a server certificate (and their keys) valid for ``hosts``,
    localhost and 127.0.0.1; returns the files (``ca.crt``, ``ca.key``, ``server.crt``,
    ``server.key``)."""
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "baps-fed pilot CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")])
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    files = []
    for name, data in [
        ("ca.crt", ca.public_bytes(serialization.Encoding.PEM)),
        ("ca.key", _pem_key(ca_key)),
        ("server.crt", server.public_bytes(serialization.Encoding.PEM)),
        ("server.key", _pem_key(server_key)),
    ]:
        _write(out / name, data)
        files.append(out / name)
    return files
