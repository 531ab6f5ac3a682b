"""Fixtures and helpers of the command-line tests."""

from __future__ import annotations

import json
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..conftest import IDENT, POOL, run_cli

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def store(db_url):
    r = run_cli(db_url, "pool", "create", POOL)
    assert r.returncode == 0, r.stderr
    return db_url


def register(url, ident=IDENT, platform="GCM", token="tok"):
    r = run_cli(url, "device", "register", POOL, ident, "--platform", platform, "--token", token)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def one_error_line(r, code):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def creds(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = {
        "type": "service_account", "project_id": "demo-project", "private_key_id": "k1",
        "private_key": rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode(),
        "client_email": "pushsync@demo-project.iam.gserviceaccount.com",
        "token_uri": "https://127.0.0.1:1/token",
    }
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps(account))
    p8 = tmp_path / "AuthKey.p8"
    p8.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"sa": str(sa), "p8": str(p8), "rsa_pem": account["private_key"], "p8_pem": p8.read_text()}
