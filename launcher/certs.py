"""``fal-certs``: the TLS certificates and SuperNode keys of a deployment.

Flower 1.41 secures a deployment with two independent mechanisms, and this
makes the material for both (with the ``cryptography`` package):

* **TLS** between SuperNodes / ``flwr`` and the SuperLink: a private CA
  (``ca.crt``, ``ca.key``) and a SuperLink certificate signed by it
  (``superlink.crt``, ``superlink.key``) whose subject alternative names are
  every name or address clients use to reach the SuperLink (``localhost`` and
  ``127.0.0.1`` are always included: the SuperLink's own ServerApp process
  connects through them). Clients trust ``ca.crt``.
* **SuperNode authentication** (``flower-superlink --enable-supernode-auth``):
  each site makes its own EC P-384 key pair (``<name>.key`` stays at the site,
  ``<name>.pub`` goes to the SuperLink's operator, who runs
  ``flwr supernode register <name>.pub``); the SuperLink refuses any SuperNode
  whose public key was not registered.

::

    fal-certs superlink DIR --host superlink.example.org --host 203.0.113.5
    fal-certs supernode DIR site-a

The CA key stays where it was made (it is only needed to sign a new SuperLink
certificate; an existing CA in DIR is reused). Private keys are written 0600.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_superlink_certificates", "make_supernode_key", "main"]

_ALWAYS = ("localhost", "127.0.0.1", "::1")


def _write(path: Path, data: bytes, *, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _load_or_make_ca(out: Path, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = out / "ca.key", out / "ca.crt"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: expected an EC private key")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FAL deployment CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(key_path, _pem_key(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return key, cert


def make_superlink_certificates(out: Path, hosts: list[str], *, days: int = 365) -> dict[str, Path]:
    """CA (made once, then reused) and a SuperLink certificate for ``hosts`` in ``out``."""
    out = Path(out)
    ca_key, ca_cert = _load_or_make_ca(out, days)
    names = list(dict.fromkeys([*hosts, *_ALWAYS]))
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(out / "superlink.key", _pem_key(key), private=True)
    _write(out / "superlink.crt", cert.public_bytes(serialization.Encoding.PEM), private=False)
    return {"ca": out / "ca.crt", "certfile": out / "superlink.crt", "keyfile": out / "superlink.key"}


def make_supernode_key(out: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format, as Flower's SuperNode authentication reads it."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"supernode key name must be a plain file name, got {name!r}")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(Path(out) / f"{name}.key", private, private=True)
    _write(Path(out) / f"{name}.pub", public + f" {name}\n".encode(), private=False)
    return Path(out) / f"{name}.key", Path(out) / f"{name}.pub"


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="fal-certs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sl = sub.add_parser("superlink", help="CA (reused if DIR has one) + SuperLink TLS certificate")
    sl.add_argument("dir", type=Path)
    sl.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                    help="a DNS name or IP address the SuperNodes and flwr use for the SuperLink (repeatable)")
    sl.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    sn = sub.add_parser("supernode", help="a SuperNode authentication key pair: NAME.key (keep) and NAME.pub (register)")
    sn.add_argument("dir", type=Path)
    sn.add_argument("names", nargs="+", metavar="NAME")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "superlink":
        paths = make_superlink_certificates(args.dir, args.host, days=args.days)
        print(f"CA certificate (give to every site and to flwr): {paths['ca']}")
        print(f"SuperLink certificate and key: {paths['certfile']} {paths['keyfile']}")
    else:
        for name in args.names:
            key, pub = make_supernode_key(args.dir, name)
            print(f"{name}: private key {key} (stays at the site), public key {pub} (flwr supernode register {pub})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
