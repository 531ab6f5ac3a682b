"""Key material for the emulators and the demo pool: a self-signed CA, a server certificate
for localhost, an FCM service account file and an APNs .p8 key. Written once per directory
and reused, so that a worker started later trusts the same CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

DEMO_KEY_ID = "DEMOKEY123"
DEMO_TEAM_ID = "DEMOTEAM12"
DEMO_TOPIC = "com.example.pushsync.demo"
DEMO_PROJECT = "pushsync-demo"
DEMO_CLIENT_EMAIL = f"pushsync@{DEMO_PROJECT}.iam.gserviceaccount.com"


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool,
          names: tuple[str, ...] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), *(x509.DNSName(n) for n in names),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                                        critical=False)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def ensure_material(directory: Path, fcm_token_uri: str, names: tuple[str, ...] = ()) -> dict[str, str]:
    """Create (or reuse) the files in ``directory`` and return their paths. ``names`` are
    extra DNS names for the server certificate (the emulator's host name in compose)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key",
        "service_account": directory / "service-account.json", "apns_key": directory / f"AuthKey_{DEMO_KEY_ID}.p8",
    }
    if not all(p.exists() for p in paths.values()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pushsync emulator CA")])
        ca = _cert("pushsync emulator CA", ca_key, ca_name, ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _cert("localhost", server_key, ca_name, ca_key, ca=False, names=names)
        paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
        paths["key"].write_bytes(_pem_key(server_key))
        paths["key"].chmod(0o600)
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        account = {"type": "service_account", "project_id": DEMO_PROJECT, "private_key_id": "demo-key-1",
                   "private_key": _pem_key(rsa_key).decode(), "client_email": DEMO_CLIENT_EMAIL,
                   "client_id": "100000000000000000001", "token_uri": fcm_token_uri}
        paths["service_account"].write_text(json.dumps(account, indent=2))
        paths["service_account"].chmod(0o600)
        paths["apns_key"].write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
        paths["apns_key"].chmod(0o600)
    else:
        # the FCM port may differ from the last run: keep the token_uri pointing at this one
        account = json.loads(paths["service_account"].read_text())
        if account.get("token_uri") != fcm_token_uri:
            account["token_uri"] = fcm_token_uri
            paths["service_account"].write_text(json.dumps(account, indent=2))
    return {k: str(v) for k, v in paths.items()}
