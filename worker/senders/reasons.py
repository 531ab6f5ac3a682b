"""The reason recorded for a push that got no answer (a connection refused, a TLS handshake
failed, ...), from libcurl's error code or the exception of the reference transports.

The reason is a metric label (`pushsync_pushes_failed_total{reason=...}`, `pushsync stats`) and
a dead letter's text, so it names the cause in a short text of a bounded set: never libcurl's
message itself, which carries host names, ports and milliseconds. That message goes to the log,
at most once a minute per cause.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time

import pycurl

log = logging.getLogger(__name__)

TLS_VERIFY_FAILED = "connection: TLS certificate verify failed"

_CURL = {
    pycurl.E_COULDNT_RESOLVE_HOST: "connection: host not found",
    pycurl.E_COULDNT_CONNECT: "connection: could not connect",
    pycurl.E_PEER_FAILED_VERIFICATION: TLS_VERIFY_FAILED,
    pycurl.E_SSL_CACERT: TLS_VERIFY_FAILED,  # the same code since libcurl 7.62
    pycurl.E_SSL_CACERT_BADFILE: "connection: the CA file (PUSHSYNC_CA_FILE) cannot be read",
    pycurl.E_SSL_CONNECT_ERROR: "connection: TLS handshake failed",
    pycurl.E_GOT_NOTHING: "connection: closed without an answer",
    pycurl.E_SEND_ERROR: "connection: send failed",
    pycurl.E_RECV_ERROR: "connection: receive failed",
    pycurl.E_HTTP2: "connection: HTTP/2 error",
    92: "connection: HTTP/2 stream closed",  # CURLE_HTTP2_STREAM, which pycurl 7.49 does not name
    pycurl.E_WRITE_ERROR: "connection: answer too large",  # our write callback refused it (MAX_BODY)
}
# libcurl's text for a certificate OpenSSL refused: "SSL certificate OpenSSL verify result: <why> (20)"
# (libcurl 8.x) or "SSL certificate problem: <why>" (7.x); <why> is OpenSSL's, from a fixed list
_CURL_VERIFY = re.compile(r"SSL certificate (?:OpenSSL verify result|problem): (.+?)(?: \(\d+\))?$")
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH: OpenSSL's text for it names the host
_NOT_THIS_HOST = "the certificate is not for this host name"

_last_logged: dict[str, float] = {}


def _verify_detail(why: str) -> str:
    return f"{TLS_VERIFY_FAILED}: {why}" if why and len(why) <= 80 else TLS_VERIFY_FAILED


def _logged(reason: str, detail: str) -> str:
    now = time.monotonic()
    if now - _last_logged.get(reason, -3600.0) >= 60:
        _last_logged[reason] = now
        log.warning("push without an answer, recorded as %r: %s", reason, detail)
    return reason


def curl_reason(code: int, message: str) -> str:
    """The reason for libcurl's error ``code`` with its ``message``."""
    reason = _CURL.get(code, f"connection: libcurl error {code}")
    if reason == TLS_VERIFY_FAILED:
        found = _CURL_VERIFY.search(message or "")
        if found:
            reason = _verify_detail(found.group(1))
        elif "subject name" in (message or "") or "host name" in (message or ""):
            reason = _verify_detail(_NOT_THIS_HOST)
    return _logged(reason, f"libcurl error {code}: {message}")


def exception_reason(exc: BaseException | None) -> str | None:
    """The reason for an exception a connection attempt raised (the reference transports), or
    None when it says nothing more than its type."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = _NOT_THIS_HOST if exc.verify_code == _HOSTNAME_MISMATCH else exc.verify_message
        return _logged(_verify_detail(why), repr(exc))
    if isinstance(exc, ssl.SSLError):
        return _logged("connection: TLS handshake failed", repr(exc))
    if isinstance(exc, ConnectionRefusedError):
        return _logged("connection: could not connect", repr(exc))
    if isinstance(exc, socket.gaierror):
        return _logged("connection: host not found", repr(exc))
    return None
