"""One listener for HTTP/2 and HTTP/1.1, chosen by ALPN, as Google's FCM endpoint offers both.

aiohttp's server speaks HTTP/1.1 only. A connection that settles on ``h2`` is served here with
hyper-h2: each request becomes an ``H2Request``, which carries what the FCM emulator's handlers read
of an aiohttp request (headers, host, body, form, transport), and the handler's ``web.Response`` is
written back as HTTP/2 frames. Any other connection goes to aiohttp unchanged. So both protocols
reach the same handlers, the same fault rules and the same records.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qsl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from aiohttp import web
from multidict import CIMultiDict, MultiDict

Handler = Callable[["H2Request"], Awaitable[web.Response]]
Routes = Sequence[tuple[str, re.Pattern, Handler]]  # (method, path pattern with named groups, handler)


class H2Request:
    """The parts of ``aiohttp.web.Request`` the emulator's handlers use."""

    def __init__(self, transport, headers: list[tuple[str, str]], body: bytes, match_info: dict):
        pseudo = {k: v for k, v in headers if k.startswith(":")}
        self.transport = transport
        self.method = pseudo.get(":method", "")
        self.path = pseudo.get(":path", "")
        self.host = pseudo.get(":authority", "")
        self.headers = CIMultiDict((k, v) for k, v in headers if not k.startswith(":"))
        self.match_info = match_info
        self.version = (2, 0)
        self._body = body
        self.goaway: Callable[[], None] | None = None  # set by the server: GOAWAY before this request

    async def read(self) -> bytes:
        return self._body

    async def post(self) -> MultiDict:
        return MultiDict(parse_qsl(self._body.decode("utf-8", "replace"), keep_blank_values=True))


class H2Server(asyncio.Protocol):
    """An HTTP/2 connection whose requests go to ``routes``; a 404 for any other path. The APNs
    emulator builds on it (``_accept`` refuses streams, ``_serve`` answers)."""

    def __init__(self, routes: Routes = ()):
        self.routes = routes
        self.transport: asyncio.Transport | None = None  # from connection_made to connection_lost
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                         header_encoding="utf-8"))
        self.streams: dict[int, tuple[list, bytearray]] = {}
        self.unsent: dict[int, bytearray] = {}  # answer bytes waiting for the peer's flow-control window
        self.last_stream: int | None = None  # set by a GOAWAY: later streams go unprocessed
        self.acked = False  # the client has acknowledged our settings: it must keep them from then on

    def connection_made(self, transport):
        self.transport = transport
        self.conn.initiate_connection()
        self._flush()

    def _flush(self):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes):
        assert self.transport is not None  # asyncio calls it between connection_made and connection_lost
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                if self._accept(ev.stream_id):
                    self.streams[ev.stream_id] = (ev.headers, bytearray())
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id in self.streams:
                    self.streams[ev.stream_id][1].extend(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in self.streams:
                headers, body = self.streams.pop(ev.stream_id)
                asyncio.ensure_future(self._serve(ev.stream_id, headers, bytes(body)))
            elif isinstance(ev, h2.events.StreamReset):
                self.streams.pop(ev.stream_id, None)
                self.unsent.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                self.acked = True
            elif isinstance(ev, h2.events.WindowUpdated):
                for stream_id in list(self.unsent):
                    self._send_body(stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.transport.close()
        self._flush()

    def connection_lost(self, exc):
        self.transport = None

    def _accept(self, stream_id: int) -> bool:
        """Whether a new stream is taken (a refused one must have been reset here)."""
        return True

    def _goaway(self, stream_id: int) -> None:
        """GOAWAY naming the stream before this one as the last processed; closed a moment later."""
        self.last_stream = stream_id - 2
        self.conn.close_connection(error_code=0, last_stream_id=self.last_stream)
        self._flush()
        if self.transport is not None:  # not yet closed by the peer
            asyncio.get_running_loop().call_later(0.5, self.transport.close)

    async def _serve(self, stream_id: int, headers: list, body: bytes) -> None:
        if self.last_stream is not None and stream_id > self.last_stream:
            return  # after our GOAWAY: not processed, the client sends it again elsewhere
        request = H2Request(self.transport, headers, body, {})
        request.goaway = lambda: self._goaway(stream_id)
        handler = None
        for method, pattern, candidate in self.routes:
            match = pattern.fullmatch(request.path.split("?", 1)[0])
            if match and method == request.method:
                handler, request.match_info = candidate, match.groupdict()
                break
        try:
            response = await handler(request) if handler else web.json_response({"error": "not found"}, status=404)
        except ConnectionResetError:  # a fault rule dropped the connection: nothing to answer
            return
        if self.transport is None or self.transport.is_closing():
            return
        data = response.body if isinstance(response.body, bytes) else b""
        head = [(":status", str(response.status))]
        head += [(k.lower(), v) for k, v in response.headers.items()
                 if k.lower() not in ("content-length", "connection")]
        head.append(("content-length", str(len(data))))
        try:
            self.conn.send_headers(stream_id, head, end_stream=not data)
        except h2.exceptions.StreamClosedError:
            return
        if data:
            self.unsent[stream_id] = bytearray(data)
            self._send_body(stream_id)
        self._flush()

    def _send_body(self, stream_id: int) -> None:
        """As much of the answer as the peer's window allows, in frames the peer accepts; the rest
        when a WINDOW_UPDATE comes."""
        rest = self.unsent[stream_id]
        try:
            while rest:
                room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                if room <= 0:
                    return
                chunk, rest[:room] = bytes(rest[:room]), b""
                self.conn.send_data(stream_id, chunk, end_stream=not rest)
        except (h2.exceptions.StreamClosedError, h2.exceptions.FlowControlError):
            pass
        del self.unsent[stream_id]


class ALPNSwitch(asyncio.Protocol):
    """Hands a TLS connection to ``H2Server`` when ALPN settled on h2, to aiohttp otherwise."""

    def __init__(self, routes: Routes, http1: Callable[[], asyncio.Protocol]):
        self.routes, self.http1 = routes, http1
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport):
        ssl_obj = transport.get_extra_info("ssl_object")
        h2_chosen = ssl_obj is not None and ssl_obj.selected_alpn_protocol() == "h2"
        self.inner = H2Server(self.routes) if h2_chosen else self.http1()
        self.inner.connection_made(transport)

    def data_received(self, data):
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc):
        self.inner.connection_lost(exc)

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()
