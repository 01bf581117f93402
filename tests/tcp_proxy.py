"""A TCP proxy a test can cut: clients connect to it as to the real server behind it, and the
test takes the server away (`cut`: every relayed connection dropped and new ones refused) and
gives it back (`restore`), or makes it fall silent (`freeze`: connections stay open, nothing
passes, as in a network partition) until `thaw`, while the real server keeps running for every
other test."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self.bytes_to_server = 0  # what clients sent, relayed: a way to see traffic has begun
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and drop every relayed connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def freeze(self) -> None:
        """Relay nothing more, in either direction, and close nothing."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def restore(self) -> None:
        """Listen again, on the same port."""
        await self.start()

    async def aclose(self) -> None:
        await self.cut()
        for relay in list(self._relays):
            relay.cancel()
        if self._relays:
            await asyncio.gather(*self._relays, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._links |= {client_w, server_w}
        for reader, writer, upstream in (
            (client_r, server_w, True),
            (server_r, client_w, False),
        ):
            relay = asyncio.ensure_future(self._pump(reader, writer, upstream))
            self._relays.add(relay)
            relay.add_done_callback(self._relays.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if upstream:
                    self.bytes_to_server += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._links.discard(writer)
            writer.transport.abort()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
