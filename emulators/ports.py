"""The emulator's ports, kept from one start to the next.

The first start in a --dir takes free ports and writes them to DIR/ports.json; later starts in
that --dir listen on the same ones, so the URLs in a worker's settings, and the `token_uri` in the
service account a pool was created with, stay right across restarts. A port given on the command
line wins (and is kept from then on); --new-ports forgets the kept ones. A port another process
holds is refused with one line naming it, never replaced by another one in silence.
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

PORTS_FILE = "ports.json"

# key in ports.json, the option that sets it, what listens there
SERVICES = (
    ("fcm", "--fcm-port", "FCM"),
    ("apns_production", "--apns-port", "APNs production"),
    ("apns_sandbox", "--apns-sandbox-port", "APNs sandbox"),
    ("control", "--control-port", "control API"),
)


class EmulatorError(Exception):
    """The emulator cannot start: one line for the operator."""


def _attr(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def remembered(directory: Path) -> dict[str, int]:
    """The ports the last start in ``directory`` listened on ({} on a first start)."""
    path = directory / PORTS_FILE
    if not path.exists():
        return {}
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EmulatorError(f"cannot read {path} ({exc}): delete it, or start with --new-ports") from None
    if not isinstance(kept, dict):
        raise EmulatorError(f"{path} is not a JSON object: delete it, or start with --new-ports")
    return {name: port for name, port in kept.items()
            if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536}


def wanted(args, directory: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(the port to listen on per service, 0 for a free one; the ports kept from the last start)."""
    kept = {} if args.new_ports else remembered(directory)
    ports = {}
    for name, option, _label in SERVICES:
        given = getattr(args, _attr(option))
        ports[name] = given if given is not None else kept.get(name, 0)
    labels = {name: (option, label) for name, option, label in SERVICES}
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port and port in seen:
            (o1, l1), (o2, l2) = labels[seen[port]], labels[name]
            raise EmulatorError(f"port {port} is asked for both {l1} ({o1}) and {l2} ({o2}): give one of them "
                                "another port (0 takes a free one)")
        seen[port] = name
    return ports, kept


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # a restart may find its old connections in TIME_WAIT; a port another process listens on
        # is still refused (EADDRINUSE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _refusal(exc: OSError, host: str, port: int, option: str, label: str, kept: bool, directory: Path) -> str:
    if exc.errno == errno.EADDRINUSE:
        if kept:
            return (f"port {port} ({label}), kept in {directory / PORTS_FILE} from the last start, is taken by "
                    f"another process (an emulator already running on this --dir?): stop that process, "
                    f"or choose another port with {option} N, or take new free ports with --new-ports")
        return f"port {port} ({label}, {option}) is taken by another process: choose another with {option} N"
    return f"cannot listen on {host}:{port} for {label} ({option}): {exc.strerror or exc}"


def bind_all(host: str, ports: dict[str, int], kept: dict[str, int], directory: Path) -> dict[str, socket.socket]:
    """A listening socket per service, or EmulatorError for the first port that cannot be had
    (the sockets already opened are closed again)."""
    socks: dict[str, socket.socket] = {}
    try:
        for name, option, label in SERVICES:
            port = ports[name]
            try:
                socks[name] = _listen(host, port)
            except OSError as exc:
                from_last_start = port != 0 and kept.get(name) == port
                raise EmulatorError(_refusal(exc, host, port, option, label, from_last_start, directory)) from None
    except BaseException:
        for sock in socks.values():
            sock.close()
        raise
    return socks


def keep(directory: Path, socks: dict[str, socket.socket]) -> dict[str, int]:
    """Write the ports listened on to DIR/ports.json, for the next start; return them."""
    ports = {name: sock.getsockname()[1] for name, sock in socks.items()}
    tmp = directory / (PORTS_FILE + ".tmp")
    tmp.write_text(json.dumps(ports, indent=2) + "\n")
    tmp.replace(directory / PORTS_FILE)
    return ports


def token_uri_moved(service_account: Path, token_uri: str) -> str | None:
    """A warning when the service account's token_uri is about to change (the FCM port moved):
    a pool created from the old file keeps asking the old address."""
    try:
        old = json.loads(service_account.read_text()).get("token_uri")
    except (OSError, ValueError, AttributeError):
        return None
    if old and old != token_uri:
        return (f"note: FCM's token endpoint moved from {old} to {token_uri}: a pool created from "
                f"{service_account} before now still asks the old one; run `pushsync pool create` again with it")
    return None
