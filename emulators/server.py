"""Runs both emulators and their control API in one process.

    pushsync emulator --dir DIR [--host 127.0.0.1] [--apns-port N] [--apns-sandbox-port N]
                      [--fcm-port N] [--control-port N]

Port 0 (the default) takes a free port. Once listening it writes DIR/emulator.json with the
URLs to put in PUSHSYNC_* settings and the paths of the CA, service account and APNs key.

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
import json
import signal
import socket
import ssl
from pathlib import Path

from aiohttp import web

from emulators.apns import APNsProtocol, KeyRing
from emulators.certs import DEMO_KEY_ID, DEMO_TEAM_ID, DEMO_TOPIC, ensure_material
from emulators.fcm import FCMEmulator
from emulators.h2http import ALPNSwitch
from emulators.state import Fault, State


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


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
    app.router.add_delete("/faults", clear_faults)
    app.router.add_post("/tokens/dead", dead)
    app.router.add_post("/reset", reset)
    return app


def _tls(paths: dict, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(paths["cert"], paths["key"])
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _write_info(directory: Path, info: dict) -> None:
    tmp = directory / "emulator.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(directory / "emulator.json")
    print(f"emulators ready: FCM {info['fcm_url']}, APNs {info['apns_production_url']} (production), "
          f"{info['apns_sandbox_url']} (sandbox), control {info['control_url']}", flush=True)


async def _apns_servers(args: argparse.Namespace, state: State, keys: KeyRing, paths: dict) -> tuple[list, dict]:
    """The production and sandbox hosts: HTTP/2 over TLS, each on its own port."""
    loop = asyncio.get_running_loop()
    servers, ports = [], {}
    for name, port in (("production", args.apns_port), ("sandbox", args.apns_sandbox_port)):
        sock = _bind(args.host, port)
        ports[name] = sock.getsockname()[1]
        servers.append(await loop.create_server(lambda n=name: APNsProtocol(state, keys, n), sock=sock,
                                                ssl=_tls(paths, ["h2"])))
    return servers, ports


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


async def serve(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    host = args.host
    fcm_sock = _bind(host, args.fcm_port)
    fcm_port = fcm_sock.getsockname()[1]
    public = args.public_host or host
    url_host = f"[{public}]" if ":" in public else public
    token_uri = f"https://{url_host}:{fcm_port}/token"
    paths = ensure_material(directory, token_uri, (args.public_host,) if args.public_host else ())
    state = State(log_file=open(directory / "pushes.jsonl", "a"), quiet=args.quiet)

    loop = asyncio.get_running_loop()
    keys = KeyRing()
    keys.add(DEMO_KEY_ID, DEMO_TEAM_ID, Path(paths["apns_key"]).read_bytes(), {DEMO_TOPIC})
    servers, ports = await _apns_servers(args, state, keys, paths)

    fcm_runner = await _fcm_server(state, token_uri, paths, fcm_sock, servers)
    control_runner = web.AppRunner(control_app(state), access_log=None, handle_signals=False)
    await control_runner.setup()
    control_sock = _bind(host, args.control_port)
    await web.SockSite(control_runner, control_sock).start()
    _write_info(directory, {
        "fcm_url": f"https://{url_host}:{fcm_port}",
        "apns_production_url": f"https://{url_host}:{ports['production']}",
        "apns_sandbox_url": f"https://{url_host}:{ports['sandbox']}",
        "control_url": f"http://{url_host}:{control_sock.getsockname()[1]}",
        "ca_file": paths["ca"], "service_account": paths["service_account"], "apns_key": paths["apns_key"],
        "apns_key_id": DEMO_KEY_ID, "apns_team_id": DEMO_TEAM_ID, "apns_topic": DEMO_TOPIC,
    })

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
    await fcm_runner.cleanup()
    await control_runner.cleanup()


def main(args: argparse.Namespace) -> int:
    asyncio.run(serve(args))
    return 0
