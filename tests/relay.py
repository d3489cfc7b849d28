"""A TCP relay that can stop answering: a database that accepts connections but is silent.

``Relay(host, port)`` listens on 127.0.0.1 (a free port) and forwards every
connection, both ways, to ``host:port`` (a MongoDB server). :meth:`Relay.freeze`
stops the bytes while every connection stays open and new ones are still
accepted, as a database whose process hangs (a paused VM, a network partition
that keeps TCP up) looks to a client; ``freeze(monitoring=True)`` still lets
the driver's ``hello`` commands through (connection handshakes, the monitor's
checks), as a server stuck on a lock or a stalled disk still answers them
while every operation hangs. :meth:`Relay.thaw` lets the held bytes and the
new ones through again. :meth:`Relay.refuse` drops every connection and refuses
new ones until :meth:`Relay.accept`, as a database process that died and
restarted.

:meth:`Relay.fail_write_concern` makes the replies to writes carry a
``writeConcernError`` (the write itself is applied), as a replica set answers
when a majority cannot confirm a write in time or at all.

It runs its own asyncio loop in a thread, so it keeps relaying while the test
thread blocks (in ``AsyncHTTPTestCase.fetch``, in a subprocess wait, ...).
Usable from any test, or from a script: ``with Relay(host, port) as relay:
... relay.uri ...``.
"""

import asyncio
import socket
import struct
import threading

import bson

# Wire protocol opcodes (https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/).
OP_QUERY, OP_MSG = 2004, 2013
MONITORING_COMMANDS = (b"hello", b"isMaster", b"ismaster")
WRITE_COMMANDS = (b"insert", b"update", b"delete", b"findAndModify")
CHECKSUM_PRESENT = 1


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """Read one whole wire-protocol message (raises IncompleteReadError at the end)."""
    header = await reader.readexactly(16)
    length = struct.unpack_from("<i", header)[0]
    return header + await reader.readexactly(length - 16)


def with_field(reply: bytes, name: str, value: dict) -> bytes:
    """An OP_MSG reply with ``name: value`` added to its body (its checksum dropped)."""
    request_id, response_to, opcode = struct.unpack_from("<iii", reply, 4)
    flags = struct.unpack_from("<I", reply, 16)[0]
    if opcode != OP_MSG or reply[20] != 0:
        return reply
    size = struct.unpack_from("<i", reply, 21)[0]
    body = bson.decode(reply[21:21 + size])
    body[name] = value
    rest = reply[21 + size:len(reply) - 4 if flags & CHECKSUM_PRESENT else len(reply)]
    payload = (struct.pack("<I", flags & ~CHECKSUM_PRESENT) + b"\0" + bson.encode(body)
               + rest)
    return struct.pack("<iiii", 16 + len(payload), request_id, response_to, opcode) + payload


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
        self.write_concern_error = None
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
        try:
            await self._relay(client_reader, client_writer)
        except asyncio.CancelledError:
            # close() cancels every connection; asyncio 3.11's stream callback
            # calls exception() on the task and would log the cancellation.
            return

    async def _relay(self, client_reader, client_writer):
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
        writes = set()  # request ids of the writes in flight on this connection
        await asyncio.gather(self._requests(client_reader, server_writer, writes),
                             self._replies(server_reader, client_writer, writes))

    async def _requests(self, reader, writer, writes):
        """Forward whole requests, each when it may pass (see :meth:`freeze`)."""
        try:
            while True:
                message = await read_message(reader)
                name = command_name(message)
                while not (self.flowing.is_set() or (
                        self.monitoring_flows and name in MONITORING_COMMANDS)):
                    await self.changed.wait()
                if name in WRITE_COMMANDS:
                    writes.add(struct.unpack_from("<i", message, 4)[0])
                writer.write(message)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _replies(self, reader, writer, writes):
        """Forward the server's replies; frozen, only those to monitoring commands."""
        try:
            while True:
                message = await read_message(reader)
                # A reply read just before a full freeze waits here until the thaw.
                while not (self.flowing.is_set() or self.monitoring_flows):
                    await self.changed.wait()
                response_to = struct.unpack_from("<i", message, 8)[0]
                if response_to in writes:
                    writes.discard(response_to)
                    if self.write_concern_error is not None:
                        message = with_field(message, "writeConcernError",
                                             self.write_concern_error)
                writer.write(message)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
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

    def fail_write_concern(self, error: dict | None) -> None:
        """Add ``writeConcernError: error`` to every reply to a write from now on (None: stop).

        Args:
            error: the server's error document, e.g. ``{"code": 64, "codeName":
                "WriteConcernTimeout", "errmsg": "waiting for replication timed out"}``.
        """
        async def set_error():
            self.write_concern_error = error
        self._call(set_error())  # in force when this returns

    async def _refuse(self):
        self._server.close()
        await self._server.wait_closed()
        for writer in list(self._writers):
            writer.close()

    def refuse(self) -> None:
        """Drop every connection and refuse new ones: a database process that died."""
        self._call(self._refuse())

    async def _accept(self):
        sock = socket.create_server(("127.0.0.1", self.port))
        self._server = await asyncio.start_server(self._serve, sock=sock)

    def accept(self) -> None:
        """Listen on the same port again, after :meth:`refuse`: the database restarted."""
        self._call(self._accept())

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
