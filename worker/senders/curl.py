"""An HTTP/2 transport on libcurl's multi interface (pycurl), driven by the sending event loop.

Why libcurl and not an asyncio HTTP/2 stack: one process sends APNs-shaped POSTs through it several
times as fast in CPU per request as hyper-h2 on asyncio (what aioapns is built on); the framing,
HPACK and TLS run in C. The senders keep their own error tables, tokens and outcomes; this module
only moves requests and answers.

How it is driven: libcurl tells us which sockets to watch (``M_SOCKETFUNCTION``) and when to call it
back (``M_TIMERFUNCTION``); the loop's ``add_reader``/``add_writer`` and ``call_later`` do the
watching, and ``socket_action`` lets libcurl do its work, all on the loop's thread, with no thread
of its own and no polling. A request is an easy handle (reused from a small free list) whose answer
resolves a future.

What libcurl does for us, and ``tests/worker/test_curl.py`` pins: requests to one host share one
connection while its streams allow (``PIPEWAIT``: wait for a multiplexed stream rather than open a
connection), a new connection only when its streams are full and ``max_connections`` allows; the
server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` is honoured (nghttp2); a request past its timeout is
ended (``TIMEOUT_MS``); a connection that a GOAWAY closes is not reused. What it does not: close a
connection that stopped answering (a timed-out stream is reset, its connection kept). So a timeout
retires the whole multi handle: new requests go to a fresh one (new connections), and the retired
one is closed once what it still carries has ended (each request has its own timeout).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from io import BytesIO

import pycurl

from worker.senders.reasons import curl_reason

E_HTTP2_STREAM = 92  # CURLE_HTTP2_STREAM, which pycurl 7.49 does not name
# "the server did not process this request" (an HTTP/2 stream refused, or closed by GOAWAY, before
# any answer): safe to send once more
_UNPROCESSED = {E_HTTP2_STREAM, pycurl.E_HTTP2, pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR, pycurl.E_GOT_NOTHING}
FREE_HANDLES = 256
# The longest answer body read (APNs error bodies are a few dozen bytes, FCM's under 1 KiB): a body
# past it ends the request as a transport error, a retry, instead of filling memory.
MAX_BODY = 64 << 10


class TransportError(Exception):
    """No answer: a connection refused, dropped or timed out; ``reason`` names which."""

    def __init__(self, reason: str, code: int = 0):
        super().__init__(reason)
        self.reason, self.code = reason, code

    @property
    def unprocessed(self) -> bool:
        return self.code in _UNPROCESSED


@dataclass(frozen=True)
class Answer:
    status: int
    head: list[bytes]  # the raw header lines, read only when asked (a 200 needs none)
    body: bytes

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; the last value of a repeated header."""
        return _headers(self.head)


class _Multi:
    """One libcurl multi handle and its connections, watched by the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_connections: int, streams: int, on_done):
        self.loop, self.on_done = loop, on_done
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        self.multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, max_connections)
        self.multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, streams)
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self.timer: asyncio.TimerHandle | None = None
        self.watched: dict[int, int] = {}
        self.pending: dict[pycurl.Curl, tuple[asyncio.Future, BytesIO, list[bytes]]] = {}
        self.closed = False
        # the first request goes alone: its answer means the server's SETTINGS have arrived
        self.warm: asyncio.Future | None = None

    def _on_socket(self, what: int, fd: int, _multi, _data) -> None:
        old = self.watched.pop(fd, pycurl.POLL_REMOVE)
        if old in (pycurl.POLL_IN, pycurl.POLL_INOUT):
            self.loop.remove_reader(fd)
        if old in (pycurl.POLL_OUT, pycurl.POLL_INOUT):
            self.loop.remove_writer(fd)
        if what == pycurl.POLL_REMOVE or self.closed:
            return
        if what in (pycurl.POLL_IN, pycurl.POLL_INOUT):
            self.loop.add_reader(fd, self.act, fd, pycurl.CSELECT_IN)
        if what in (pycurl.POLL_OUT, pycurl.POLL_INOUT):
            self.loop.add_writer(fd, self.act, fd, pycurl.CSELECT_OUT)
        self.watched[fd] = what

    def _on_timer(self, ms: int) -> None:
        if ms < 0 or self.closed:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            return
        when = self.loop.time() + ms / 1000
        if self.timer is not None:
            # libcurl asks again after nearly every action, mostly for the same moment: a timer
            # within a millisecond of it is kept (cancelling and scheduling was 8 % of the thread)
            if abs(self.timer.when() - when) < 0.001:
                return
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._timeout)

    def _timeout(self) -> None:
        self.timer = None  # fired: the next request for a timer makes a new one
        self.act(pycurl.SOCKET_TIMEOUT, 0)

    def act(self, fd: int, event: int) -> None:
        if self.closed:
            return
        while True:
            ret, _running = self.multi.socket_action(fd, event)
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        while True:
            queued, ok, failed = self.multi.info_read()
            for handle in ok:
                self._finish(handle, None)
            for handle, code, message in failed:
                why = "timeout" if code == pycurl.E_OPERATION_TIMEDOUT else curl_reason(code, message)
                self._finish(handle, TransportError(why, code))
            if not queued:
                break

    def _finish(self, handle: pycurl.Curl, error: TransportError | None) -> None:
        self.multi.remove_handle(handle)
        future, body, head = self.pending.pop(handle)
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(Answer(handle.getinfo(pycurl.RESPONSE_CODE), head, body.getvalue()))
        self.on_done(self, handle, error)

    def add(self, handle: pycurl.Curl, future: asyncio.Future, out: BytesIO, head: list[bytes]) -> None:
        self.pending[handle] = (future, out, head)
        self.multi.add_handle(handle)  # libcurl asks for a timer at once: the loop starts it

    def drop(self, handle: pycurl.Curl) -> None:
        """A request its caller gave up on."""
        if self.pending.pop(handle, None) is not None:
            self.multi.remove_handle(handle)
            handle.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for handle, (future, _body, _head) in list(self.pending.items()):
            self.multi.remove_handle(handle)
            handle.close()
            if not future.done():
                future.set_exception(TransportError("connection: client closed"))
        self.pending.clear()
        for fd in list(self.watched):
            self._on_socket(pycurl.POLL_REMOVE, fd, None, None)
        self.multi.close()


class CurlClient:
    """Requests to one host with one set of credentials: one multi handle's connection cache,
    so one client per (credentials, host) keeps the connections Apple and Google expect."""

    def __init__(self, *, ca_file: str | None, max_connections: int = 1, streams: int = 1000):
        self._loop = asyncio.get_running_loop()
        self._ca_file, self._limits = ca_file, (max_connections, streams)
        self._current = self._new_multi()
        self._retired: list[_Multi] = []
        self._free: list[pycurl.Curl] = []
        self._closed = False
        self.retirements = 0  # multi handles given up after a timeout (tests and logs read it)

    def _new_multi(self) -> _Multi:
        return _Multi(self._loop, *self._limits, self._done)

    def _done(self, multi: _Multi, handle: pycurl.Curl, error: TransportError | None) -> None:
        if error is not None and error.reason == "timeout" and multi is self._current:
            # the connection may have stopped answering: new requests get new connections
            self._retired.append(multi)
            self._current = self._new_multi()
            self.retirements += 1
        if len(self._free) < FREE_HANDLES and not self._closed:  # kept with its options: each post sets its own
            self._free.append(handle)
        else:
            handle.close()
        if multi is not self._current and not multi.pending:
            self._loop.call_soon(self._close_retired, multi)

    def _close_retired(self, multi: _Multi) -> None:
        if multi in self._retired and not multi.pending:
            self._retired.remove(multi)
            multi.close()

    async def post(self, url: str, headers: list[str], body: bytes, timeout: float) -> Answer:
        if self._closed:
            raise TransportError("connection: client closed")
        handle = self._free.pop() if self._free else self._new_handle()
        out = BytesIO()
        head: list[bytes] = []
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.HTTPHEADER, headers)
        handle.setopt(pycurl.WRITEFUNCTION, _bounded(out))
        handle.setopt(pycurl.HEADERFUNCTION, head.append)
        handle.setopt(pycurl.TIMEOUT_MS, max(1, int(timeout * 1000)))
        multi, first = await self._multi_for_next()
        future = self._loop.create_future()
        multi.add(handle, future, out, head)
        try:
            return await future
        except asyncio.CancelledError:
            multi.drop(handle)
            raise
        finally:
            if first and multi.warm is not None and not multi.warm.done():  # the first sets it: never None
                multi.warm.set_result(None)

    async def post_again_if_unprocessed(self, url: str, headers: list[str], body: bytes, timeout: float) -> Answer:
        """``post``, and once more when the server did not process it (a GOAWAY, a refused stream):
        the senders' way, since such a request is safe to send again. libcurl resends some itself."""
        try:
            return await self.post(url, headers, body, timeout)
        except TransportError as exc:
            if not exc.unprocessed:
                raise
        return await self.post(url, headers, body, timeout)

    def _new_handle(self) -> pycurl.Curl:
        """An easy handle with what every request shares set once."""
        handle = pycurl.Curl()
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
        handle.setopt(pycurl.PIPEWAIT, 1)
        handle.setopt(pycurl.POST, 1)
        handle.setopt(pycurl.NOSIGNAL, 1)
        if self._ca_file:
            handle.setopt(pycurl.CAINFO, self._ca_file)
        return handle

    async def _multi_for_next(self) -> tuple[_Multi, bool]:
        """The multi handle a request goes to, and whether it is that handle's first. A fresh
        connection does not know the server's stream limit until its SETTINGS arrive; libcurl
        would send up to its own limit meanwhile, and APNs (which starts a connection at one
        stream) refuses the rest, each refusal costing a fresh connection in libcurl. So the
        first request of a multi handle goes alone and the others wait for its answer."""
        while True:
            multi = self._current
            if multi.warm is None:
                multi.warm = self._loop.create_future()
                return multi, True
            if multi.warm.done():
                return multi, False
            await asyncio.shield(multi.warm)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for multi in (*self._retired, self._current):
            multi.close()
        self._retired.clear()
        for handle in self._free:
            handle.close()
        self._free.clear()


def _bounded(out: BytesIO):
    def write(chunk: bytes) -> int | None:
        if out.tell() + len(chunk) > MAX_BODY:
            return 0  # not what was given: libcurl aborts the transfer (CURLE_WRITE_ERROR)
        out.write(chunk)
        return None
    return write


def _headers(lines: list[bytes]) -> dict[str, str]:
    """The last response's headers (a 100 Continue or a redirect would come before it)."""
    out: dict[str, str] = {}
    for raw in lines:
        line = raw.decode("latin-1").strip()
        if line.upper().startswith("HTTP/"):
            out = {}
        elif ":" in line:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
    return out
