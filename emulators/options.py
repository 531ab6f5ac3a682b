"""The emulator's command-line options, apart from the server so that building the `pushsync`
parser does not import aiohttp, h2 and the rest for every command."""

from __future__ import annotations

import argparse


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {port} (0-65535; 0 takes a new free one)")
    return port


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0.1 to 3600 seconds, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="emulator-state",
                   help="where keys, emulator.json, ports.json and pushes.jsonl go (its ports are kept there)")
    p.add_argument("--host", default="127.0.0.1")
    ports = ("the port, kept for the next starts in this --dir (default: the one kept from the last start, "
             "or a free one on the first; 0: a new free one)")
    p.add_argument("--fcm-port", type=_port, metavar="N", help=f"FCM's send and token endpoints: {ports}")
    p.add_argument("--apns-port", type=_port, metavar="N", help="APNs production: the same")
    p.add_argument("--apns-sandbox-port", type=_port, metavar="N", help="APNs sandbox: the same")
    p.add_argument("--control-port", type=_port, metavar="N", help="the control API: the same")
    p.add_argument("--new-ports", action="store_true",
                   help="forget the ports kept in --dir and take free ones (those given by option aside)")
    p.add_argument("--env-file", metavar="FILE",
                   help="write the PUSHSYNC_ settings a worker needs for this emulator to FILE (KEY=VALUE "
                        "lines for `set -a; . FILE; set +a` or compose's env_file:)")
    p.add_argument("--public-host", help="host name clients use (put in the URLs and the certificate), "
                                         "e.g. the compose service name")
    p.add_argument("--quiet", action="store_true", help="do not print each push")
    p.add_argument("--fcm-quota", type=_count, metavar="N", default=0,
                   help="refuse a project's messages past N a quota window (every request counts, refused "
                        "ones too) with 429 QUOTA_EXCEEDED and Retry-After, as FCM does past its quota "
                        "(default 0: no quota)")
    p.add_argument("--fcm-quota-window", type=_seconds, metavar="SECONDS", default=60.0,
                   help="the quota's window (default 60: FCM's quota is per minute)")


def pushsync_env(info: dict) -> dict[str, str]:
    """The settings that point pushsync at a running emulator (its emulator.json)."""
    return {
        "PUSHSYNC_FCM_URL": info["fcm_url"],
        "PUSHSYNC_APNS_PRODUCTION_URL": info["apns_production_url"],
        "PUSHSYNC_APNS_SANDBOX_URL": info["apns_sandbox_url"],
        "PUSHSYNC_CA_FILE": info["ca_file"],
    }
