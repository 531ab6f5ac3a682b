"""`pushsync emulator --env-file FILE`: the settings a worker needs to talk to this emulator,
as KEY=VALUE lines that both `set -a; . FILE; set +a` (bash, sh) and docker compose's
`env_file:` read the same way, and the `pool create` options that use the emulator's keys."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from emulators.options import pushsync_env
from emulators.ports import EmulatorError

# characters a value may hold unquoted in both readers; anything else is single-quoted (literal
# in sh and in compose alike), and a value that cannot be written that way is refused
_BARE = re.compile(r"[A-Za-z0-9_./:@%+,=-]*")


def _value(key: str, value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    if "'" in value or "\n" in value or "\r" in value:
        raise EmulatorError(f"cannot write {key} to an env file: {value!r} holds a quote or a line break "
                            "(choose a --dir without one)")
    return f"'{value}'"


def pool_create_options(info: dict) -> str:
    """What `pushsync pool create POOL_ID ...` needs to use the emulator's FCM and APNs keys."""
    return shlex.join(["--fcm-service-account", info["service_account"], "--apns-key", info["apns_key"],
                       "--apns-key-id", info["apns_key_id"], "--apns-team-id", info["apns_team_id"],
                       "--apns-topic", info["apns_topic"]])


def render(info: dict) -> str:
    lines = [f"# written by `pushsync emulator --dir {info['dir']}` at {time.strftime('%Y-%m-%d %H:%M:%S %z')}: "
             "the PUSHSYNC_ settings of a worker that talks to this emulator",
             "# load with `set -a; . THIS_FILE; set +a`, or name it in docker compose's env_file:",
             f"# the emulator's keys for a pool: pushsync pool create POOL_ID {pool_create_options(info)}"]
    lines += [f"{key}={_value(key, value)}" for key, value in pushsync_env(info).items()]
    return "\n".join(lines) + "\n"


def write(path: Path, info: dict) -> None:
    text = render(info)  # refused before anything is written
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise EmulatorError(f"cannot write the env file {path}: {exc.strerror or exc}") from None
