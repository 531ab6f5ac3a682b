"""uvicorn's HTTP protocol with a deadline on each request's head.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``), and every byte that
arrives resets it: a client that sends its request line and headers one byte at a time holds a
connection, and a file descriptor, for as long as it likes (slowloris). Here each request's head
must be complete within HEAD_DEADLINE seconds of the connection, or of the previous response; the
body has its own deadline (``api.app.read_json``). uvicorn has no setting for it, hence this class.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_DEADLINE = 10.0


class DeadlineProtocol(HttpToolsProtocol):
    _head_timer = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(HEAD_DEADLINE, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request on this connection gets a deadline of its own, unless it is a pipelined
        # one whose head has arrived already and that uvicorn has just started (self.cycle is it)
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)
