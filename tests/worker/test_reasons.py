"""The reason recorded for a push without an answer: the cause in a short text of a bounded set
(it is a metric label), from libcurl's code and message or a reference transport's exception.
The live TLS case, through a real worker on both transports, is in tests/e2e/test_tls.py."""

from __future__ import annotations

import socket
import ssl

import pycurl
import pytest

from worker.senders.reasons import TLS_VERIFY_FAILED, curl_reason, exception_reason


@pytest.mark.parametrize("message", [
    "SSL certificate OpenSSL verify result: certificate has expired (10)",  # libcurl 8
    "SSL certificate problem: certificate has expired",  # libcurl 7
])
def test_a_refused_certificate_is_named_with_openssls_reason(message):
    assert curl_reason(pycurl.E_PEER_FAILED_VERIFICATION, message) == f"{TLS_VERIFY_FAILED}: certificate has expired"


def test_a_certificate_for_another_host_does_not_put_the_host_in_the_reason():
    reason = curl_reason(pycurl.E_PEER_FAILED_VERIFICATION,
                         "SSL: no alternative certificate subject name matches target host name 'apns.example'")
    assert reason == f"{TLS_VERIFY_FAILED}: the certificate is not for this host name"


def test_ports_hosts_and_times_stay_out_of_the_reason():
    a = curl_reason(pycurl.E_COULDNT_CONNECT, "Failed to connect to 127.0.0.1 port 9443 after 0 ms: Couldn't connect")
    b = curl_reason(pycurl.E_COULDNT_CONNECT, "Failed to connect to 10.0.0.7 port 443 after 3001 ms: Timeout")
    assert a == b == "connection: could not connect"
    assert curl_reason(pycurl.E_SSL_CONNECT_ERROR, "OpenSSL SSL_connect: SSL_ERROR_SYSCALL in connection to x:1 ") == (
        "connection: TLS handshake failed")
    assert curl_reason(4242, "something new at 10.1.2.3:99") == "connection: libcurl error 4242"


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    exc.verify_code, exc.verify_message = code, message
    return exc


def test_the_reference_transports_exceptions_give_the_same_reasons():
    assert exception_reason(_verify_error(20, "unable to get local issuer certificate")) == (
        f"{TLS_VERIFY_FAILED}: unable to get local issuer certificate")
    assert exception_reason(_verify_error(62, "Hostname mismatch, certificate is not valid for 'h.example'.")) == (
        f"{TLS_VERIFY_FAILED}: the certificate is not for this host name")
    assert exception_reason(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]")) == "connection: TLS handshake failed"
    assert exception_reason(ConnectionRefusedError(111, "refused")) == "connection: could not connect"
    assert exception_reason(socket.gaierror(-2, "Name or service not known")) == "connection: host not found"
    assert exception_reason(RuntimeError("x")) is None and exception_reason(None) is None
