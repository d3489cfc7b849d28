"""A TCP relay that can stop answering: a database that accepts connections but is silent.

``Relay(host, port)`` listens on 127.0.0.1 (a free port) and forwards every
connection, both ways, to ``host:port`` (a MongoDB server). :meth:`Relay.freeze`
stops the bytes while every connection stays open and new ones are still
accepted, as a database whose process hangs (a paused VM, a network partition
that keeps TCP up) looks to a client; ``freeze(monitoring=True)`` still lets
the driver's ``hello`` commands through (connection handshakes, the monitor's
checks), as a server stuck on a lock or a stalled disk still answers them
while every operation hangs. :meth:`Relay.thaw` lets the held bytes and the
new ones through again.

It runs its own asyncio loop in a thread, so it keeps relaying while the test
thread blocks (in ``AsyncHTTPTestCase.fetch``, in a subprocess wait, ...).
Usable from any test, or from a script: ``with Relay(host, port) as relay:
... relay.uri ...``.
"""

import asyncio
import socket
import struct
import threading

# Wire protocol opcodes (https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/).
OP_QUERY, OP_MSG = 2004, 2013
MONITORING_COMMANDS = (b"hello", b"isMaster", b"ismaster")


def command_name(message: bytes) -> bytes:
    """The name of the command in a wire-protocol request (b"" when unknown)."""
    opcode = struct.unpack_from("<i", message, 12)[0]
    if opcode == OP_MSG:  # header, flagBits, section kind 0, BSON body
        start = 16 + 4 + 1 + 4
    elif opcode == OP_QUERY:  # header, flags, "<db>.$cmd", skip, return, BSON query
        start = message.index(b"\0", 20) + 1 + 8 + 4
    else:
        return b""
    return message[start + 1:message.index(b"\0", start + 1)]


class Relay:
    """Forward 127.0.0.1:<port> to ``host:port``; freeze and thaw the traffic.

    Args:
        host, port: where to forward (the real server).
    """

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.loop = asyncio.new_event_loop()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.monitoring_flows = False
        self.changed = asyncio.Event()
        self.connections = 0
        self._writers = set()
        self._server = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="relay",
                                        daemon=True)
        self._thread.start()
        self.port = self._call(self._listen())

    @property
    def uri(self) -> str:
        """A ``mongodb://`` URI that reaches the target through the relay."""
        return f"mongodb://127.0.0.1:{self.port}/"

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def _listen(self) -> int:
        sock = socket.create_server(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._serve, sock=sock)
        return sock.getsockname()[1]

    async def _serve(self, client_reader, client_writer):
        self.connections += 1
        self._writers.add(client_writer)
        # Accepted at once, frozen or not; the target is reached only when
        # something may flow, so a frozen relay does not even connect onwards.
        while not (self.flowing.is_set() or self.monitoring_flows):
            await self.changed.wait()
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            self._writers.discard(client_writer)
            return
        self._writers.add(server_writer)
        await asyncio.gather(self._requests(client_reader, server_writer),
                             self._pump(server_reader, client_writer))

    async def _requests(self, reader, writer):
        """Forward whole requests, each when it may pass (see :meth:`freeze`)."""
        try:
            while True:
                header = await reader.readexactly(16)
                length = struct.unpack_from("<i", header)[0]
                message = header + await reader.readexactly(length - 16)
                while not (self.flowing.is_set() or (
                        self.monitoring_flows and command_name(message) in MONITORING_COMMANDS)):
                    await self.changed.wait()
                writer.write(message)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _pump(self, reader, writer):
        """Forward the server's replies; frozen, only those to monitoring commands."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                # A reply read just before a full freeze waits here until the thaw.
                while not (self.flowing.is_set() or self.monitoring_flows):
                    await self.changed.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    def _set(self, flowing, monitoring):
        self.monitoring_flows = monitoring
        if flowing:
            self.flowing.set()
        else:
            self.flowing.clear()
        # Wake every waiter to look again, then arm the next change.
        self.changed.set()
        self.changed = asyncio.Event()

    def freeze(self, monitoring: bool = False) -> None:
        """Stop forwarding; connections stay open and new ones are accepted.

        Args:
            monitoring: still forward the driver's ``hello`` commands and their
                replies: a server that answers its monitor while operations hang.
        """
        self.loop.call_soon_threadsafe(self._set, False, monitoring)

    def thaw(self) -> None:
        """Forward everything again, the held requests first."""
        self.loop.call_soon_threadsafe(self._set, True, False)

    async def _close(self):
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Close every connection and stop the relay's thread."""
        if self.loop.is_closed():
            return
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
