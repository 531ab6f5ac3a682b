"""Runs both emulators and their control API in one process.

    pushsync emulator --dir DIR [--host 127.0.0.1] [--apns-port N] [--apns-sandbox-port N]
                      [--fcm-port N] [--control-port N] [--new-ports] [--env-file FILE]

The first start in DIR takes free ports and keeps them in DIR/ports.json; later starts reuse
them (emulators.ports). Once listening it writes DIR/emulator.json with the URLs to put in
PUSHSYNC_* settings and the absolute paths of the CA, service account and APNs key (removed
again at a stop, so that it exists while the emulator listens), and with --env-file those
settings as an env file (emulators.envfile), which stays.

Control API (plain HTTP on the control port):
    GET  /requests            every request received, oldest first (tokens in full: test data)
    GET  /stats               connections opened per service, requests per status
    POST /faults              {"service", "status", "reason", "retry_after", "count", "token",
                               "latency", "drop", "stall", "goaway", "body", "headers"}: misbehave for matching
                              requests (service "oauth": FCM's token endpoint, status, latency and
                              stall only; stall: unanswered while the rule stands, then dropped)
    DELETE /faults            behave again
    POST /apns/settings       {"max_concurrent_streams": N or null}: APNs connections opened from now on
                              allow N streams at once, a stream past it refused (GET /stats:
                              apns_refused_streams, before and after the client acknowledged it)
    POST /tokens/dead         {"token": T}: answer T as unregistered from now on
    POST /reset               forget requests, counters, faults and dead tokens
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shlex
import signal
import socket
import ssl
import sys
from pathlib import Path

from aiohttp import web

from emulators import envfile
from emulators.apns import APNsProtocol, KeyRing
from emulators.certs import DEMO_KEY_ID, DEMO_TEAM_ID, DEMO_TOPIC, ensure_material
from emulators.fcm import FCMEmulator
from emulators.h2http import ALPNSwitch
from emulators.ports import PORTS_FILE, EmulatorError, bind_all, keep, token_uri_moved, wanted
from emulators.state import Fault, State


def _fcm_quota(state: State):
    async def fcm_quota(r):
        """Set the FCM quota (``--fcm-quota``) of a running emulator: {"quota": N, "window": SECONDS}."""
        body = await r.json()
        quota = body.get("quota") if isinstance(body, dict) else None
        window = body.get("window", state.fcm_quota_window) if isinstance(body, dict) else None
        if (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0 or isinstance(window, bool)
                or not isinstance(window, (int, float)) or not 0.1 <= window <= 3600):
            return web.json_response({"error": "quota: an integer >= 0; window: 0.1 to 3600 seconds"}, status=400)
        state.fcm_quota, state.fcm_quota_window = quota, float(window)
        state.quota_used.clear()
        return web.json_response({"quota": quota, "window": float(window)})

    return fcm_quota


def _fcm_offline(state: State):
    """The control API's offline Android devices: POST /fcm/offline and /fcm/online."""
    async def token_of(r) -> str | None:
        try:
            body = await r.json()
        except ValueError:
            return None
        token = body.get("token") if isinstance(body, dict) else None
        return token if isinstance(token, str) and token else None

    async def offline(r):
        """An Android device goes offline ({"token": T}): FCM keeps its messages (State.keep_offline)."""
        token = await token_of(r)
        if token is None:
            return web.json_response({"error": "token: a non-empty string"}, status=400)
        state.offline.setdefault(token, {})
        return web.json_response({"offline": token})

    async def online(r):
        """The device is back ({"token": T}): the messages FCM kept for it, as the device gets them, and
        whether FCM discarded them all (more than OFFLINE_PLAIN without a collapse key)."""
        token = await token_of(r)
        if token is None or token not in state.offline:
            return web.json_response({"error": "token: a device marked offline"}, status=400)
        kept = state.offline.pop(token)
        return web.json_response({"delivered": [*kept.get("plain", {}).values(), *kept.get("keyed", {}).values()],
                                  "deleted_messages": bool(kept.get("deleted"))})

    return offline, online


def control_app(state: State) -> web.Application:
    async def requests(_r):
        return web.json_response(state.requests)

    async def stats(_r):
        return web.json_response(state.stats())

    async def add_fault(r):
        body = await r.json()
        allowed = set(Fault.__dataclass_fields__)
        if not isinstance(body, dict) or set(body) - allowed:
            return web.json_response({"error": f"fault keys are {sorted(allowed)}"}, status=400)
        if body.get("retry_after") is not None:
            body["retry_after"] = str(body["retry_after"])
        state.faults.append(Fault(**body))
        return web.json_response({"faults": len(state.faults)})

    async def clear_faults(_r):
        state.faults.clear()
        return web.json_response({"faults": 0})

    async def apns_settings(r):
        body = await r.json()
        streams = body.get("max_concurrent_streams") if isinstance(body, dict) else None
        if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
            return web.json_response({"error": "max_concurrent_streams: a positive integer or null"}, status=400)
        state.apns_max_streams = streams
        return web.json_response({"max_concurrent_streams": streams})

    async def dead(r):
        state.dead_tokens.add((await r.json())["token"])
        return web.json_response({"dead_tokens": len(state.dead_tokens)})

    async def reset(_r):
        state.reset()
        return web.json_response({"reset": True})

    app = web.Application()
    app.router.add_get("/requests", requests)
    app.router.add_get("/stats", stats)
    app.router.add_post("/faults", add_fault)
    app.router.add_post("/apns/settings", apns_settings)
    app.router.add_post("/fcm/quota", _fcm_quota(state))
    app.router.add_delete("/faults", clear_faults)
    app.router.add_post("/tokens/dead", dead)
    offline, online = _fcm_offline(state)
    app.router.add_post("/fcm/offline", offline)
    app.router.add_post("/fcm/online", online)
    app.router.add_post("/reset", reset)
    return app


def _tls(paths: dict, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(paths["cert"], paths["key"])
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _write_info(directory: Path, info: dict, env_file: str | None) -> None:
    if env_file:
        envfile.write(Path(env_file).resolve(), info)
    tmp = directory / "emulator.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(directory / "emulator.json")
    print(f"emulators ready: FCM {info['fcm_url']}, APNs {info['apns_production_url']} (production), "
          f"{info['apns_sandbox_url']} (sandbox), control {info['control_url']}", flush=True)
    if env_file:
        quoted = shlex.quote(info["env_file"])
        print(f"settings for a worker in {info['env_file']}: set -a; . {quoted}; set +a", flush=True)
    print(f"a pool with the emulator's keys: pushsync pool create POOL_ID {envfile.pool_create_options(info)}",
          flush=True)


async def _apns_servers(state: State, keys: KeyRing, paths: dict, socks: dict) -> list:
    """The production and sandbox hosts: HTTP/2 over TLS, each on its own port."""
    loop = asyncio.get_running_loop()
    return [await loop.create_server(functools.partial(APNsProtocol, state, keys, name), sock=socks[f"apns_{name}"],
                                     ssl=_tls(paths, ["h2"])) for name in ("production", "sandbox")]


async def _fcm_server(state: State, token_uri: str, paths: dict, sock: socket.socket, servers: list) -> web.AppRunner:
    """FCM's send and token endpoints on one TLS port, HTTP/2 or HTTP/1.1 by ALPN."""
    fcm = FCMEmulator(state, token_uri)
    fcm.add_account(json.loads(Path(paths["service_account"]).read_text()))
    # a stop does not wait for requests a fault holds (a stalled token endpoint sleeps a minute)
    fcm_runner = web.AppRunner(fcm.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await fcm_runner.setup()
    routes = fcm.routes()

    def counting_factory():
        state.connections["fcm"] += 1
        return ALPNSwitch(routes, fcm_runner.server)

    loop = asyncio.get_running_loop()
    servers.append(await loop.create_server(counting_factory, sock=sock, ssl=_tls(paths, ["h2", "http/1.1"])))
    return fcm_runner


def _listening(args: argparse.Namespace, directory: Path) -> tuple[dict[str, socket.socket], dict[str, int]]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmulatorError(f"cannot use {directory} as the emulator's --dir: {exc.strerror or exc}") from None
    ports, kept = wanted(args, directory)
    socks = bind_all(args.host, ports, kept, directory)  # refused: a running emulator's files stay as they are
    (directory / "emulator.json").unlink(missing_ok=True)  # there again once this start listens
    return socks, keep(directory, socks)


def _info(directory: Path, url_host: str, ports: dict[str, int], paths: dict, env_file: str | None) -> dict:
    """emulator.json: every path in it absolute."""
    return {
        "fcm_url": f"https://{url_host}:{ports['fcm']}",
        "apns_production_url": f"https://{url_host}:{ports['apns_production']}",
        "apns_sandbox_url": f"https://{url_host}:{ports['apns_sandbox']}",
        "control_url": f"http://{url_host}:{ports['control']}",
        "ca_file": paths["ca"], "service_account": paths["service_account"], "apns_key": paths["apns_key"],
        "apns_key_id": DEMO_KEY_ID, "apns_team_id": DEMO_TEAM_ID, "apns_topic": DEMO_TOPIC,
        "dir": str(directory), "pushes_log": str(directory / "pushes.jsonl"),
        "ports_file": str(directory / PORTS_FILE),
        "env_file": str(Path(env_file).resolve()) if env_file else None,
    }


async def serve(args: argparse.Namespace) -> None:
    directory = Path(args.dir).resolve()
    socks, ports = _listening(args, directory)
    public = args.public_host or args.host
    url_host = f"[{public}]" if ":" in public else public
    token_uri = f"https://{url_host}:{ports['fcm']}/token"
    moved = token_uri_moved(directory / "service-account.json", token_uri)
    if moved:
        print(moved, file=sys.stderr, flush=True)
    paths = ensure_material(directory, token_uri, (args.public_host,) if args.public_host else ())
    state = State(log_file=open(directory / "pushes.jsonl", "a"), quiet=args.quiet, fcm_quota=args.fcm_quota,
                  fcm_quota_window=args.fcm_quota_window)

    loop = asyncio.get_running_loop()
    keys = KeyRing()
    keys.add(DEMO_KEY_ID, DEMO_TEAM_ID, Path(paths["apns_key"]).read_bytes(), {DEMO_TOPIC})
    servers = await _apns_servers(state, keys, paths, socks)
    fcm_runner = await _fcm_server(state, token_uri, paths, socks["fcm"], servers)
    control_runner = web.AppRunner(control_app(state), access_log=None, handle_signals=False)
    await control_runner.setup()
    await web.SockSite(control_runner, socks["control"]).start()
    _write_info(directory, _info(directory, url_host, ports, paths, args.env_file), args.env_file)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # emulator.json says "listening": whoever waits for it on the next start waits for that start
    (directory / "emulator.json").unlink(missing_ok=True)
    for s in servers:
        s.close()
    await fcm_runner.cleanup()
    await control_runner.cleanup()


def main(args: argparse.Namespace) -> int:
    asyncio.run(serve(args))
    return 0
