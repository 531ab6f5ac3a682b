"""The emulator's command-line options, apart from the server so that building the `pushsync`
parser does not import aiohttp, h2 and the rest for every command."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="emulator-state", help="where keys, emulator.json and pushes.jsonl go")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--apns-port", type=int, default=0)
    p.add_argument("--apns-sandbox-port", type=int, default=0)
    p.add_argument("--fcm-port", type=int, default=0)
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--public-host", help="host name clients use (put in the URLs and the certificate), "
                                         "e.g. the compose service name")
    p.add_argument("--quiet", action="store_true", help="do not print each push")


def pushsync_env(info: dict) -> dict[str, str]:
    """The settings that point pushsync at a running emulator (its emulator.json)."""
    return {
        "PUSHSYNC_FCM_URL": info["fcm_url"],
        "PUSHSYNC_APNS_PRODUCTION_URL": info["apns_production_url"],
        "PUSHSYNC_APNS_SANDBOX_URL": info["apns_sandbox_url"],
        "PUSHSYNC_CA_FILE": info["ca_file"],
    }
