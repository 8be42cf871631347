"""A self-signed HTTPS certificate for the LAN, made once and kept in the user's cache folder.

Phones give the camera only to secure pages, so the server speaks HTTPS by default. The
certificate names every LAN address of this machine; when the addresses change it is remade.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("partcam.server")

VALID_DAYS = 397  # browsers refuse longer-lived server certificates


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/partcam, or ~/.cache/partcam."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "partcam"


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other phones could reach, best guess first (no packets are sent)."""
    found: list[str] = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # a documentation address: connect() on UDP only picks a route
        found.append(probe.getsockname()[0])
    except OSError:
        pass
    finally:
        probe.close()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(str(info[4][0]))
    except OSError:
        pass
    addresses = []
    for address in found:
        if address not in addresses and not ipaddress.ip_address(address).is_loopback:
            addresses.append(address)
    return addresses


def _names_in(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def make_certificate(names: list[str], cert_path: Path, key_path: Path) -> None:
    """Write a new self-signed certificate for ``names`` (IP addresses and host names) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PartCam local server"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PartCam")])
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_certificate(addresses: list[str] | None = None, folder: Path | None = None) -> tuple[Path, Path]:
    """The cached certificate and key, remade if missing, expiring within a week, or missing an address."""
    folder = folder or cache_dir()
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    if addresses is None:
        addresses = lan_addresses()
    wanted = ["localhost", "127.0.0.1", socket.gethostname(), *addresses]
    wanted = list(dict.fromkeys(wanted))
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=7)
            if fresh and set(wanted) <= _names_in(cert):
                return cert_path, key_path
        except ValueError:
            pass
    log.info("making a self-signed certificate for %s in %s", ", ".join(wanted), folder)
    make_certificate(wanted, cert_path, key_path)
    return cert_path, key_path
