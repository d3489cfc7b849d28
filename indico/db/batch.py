"""Group commit: concurrent requests share database commands.

Each database command has a fixed cost on the server (a round trip, parsing,
on nx-27017 a lock and, for a journaled write, a sync) that dwarfs the cost of
one more document in it: on nx-27017 a ``find`` by ``_id`` costs about 0.5 ms
of the server's CPU alone and 0.05 ms a document in a batch of 25; a
journaled update 0.9 ms alone and 0.1-0.15 ms a document in a batch of 25
(docs/PERFORMANCE.md). A
:class:`Batcher` collects what concurrent requests ask and sends it in a few
commands, so under load the fixed cost is shared, and without load a request
waits for nothing.

What this keeps: every item is answered by a command sent *after* the item
was submitted, so a read sees every write acknowledged before its request
arrived (a token revoked a moment ago is refused), and a write is answered
only once its own command is acknowledged, with the command's write concern
(a journaled write survives a crash).
"""

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from pymongo.errors import NetworkTimeout

Item = TypeVar("Item")
Result = TypeVar("Result")


def _own_copy(exception: BaseException) -> BaseException:
    """A copy of ``exception`` for one caller, so callers do not share its traceback."""
    try:
        return copy.copy(exception)
    except Exception:  # an exception class that cannot be rebuilt from its args
        return exception


class Batcher(Generic[Item, Result]):
    """Send the items of concurrent calls together, a few commands at a time.

    Items wait while ``max_in_flight`` commands are out; each command carries
    at most ``max_size`` items. More than one command in flight lets the
    server work on one batch while this process prepares the next.

    Args:
        run: ``async run(items) -> results``: one command for a list of items;
            ``results`` holds one entry per item, in order, each a value or an
            exception instance to raise for that item alone. An exception
            raised by ``run`` itself is raised for every item of the batch.
        max_size: the most items in one command.
        max_in_flight: the most commands out at once.
        timeout: the most seconds a caller waits in all (None: no bound). The
            operation timeout bounds each command, not the wait for the commands
            ahead of it; with this, a database that does not answer costs a
            caller ``timeout`` seconds, not up to ``max_in_flight + 1`` of them.
    """

    def __init__(self, run: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]],
                 max_size: int = 25, max_in_flight: int = 2,
                 timeout: float | None = None) -> None:
        self.run = run
        self.max_size = max_size
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self.senders: set[asyncio.Future[None]] = set()

    async def submit(self, item: Item) -> Result:
        """Return the result for ``item`` once the command that carries it returns.

        Raises:
            the exception ``run`` gave for this item or for its whole batch.
            NetworkTimeout: no answer within ``timeout`` seconds (a write may
                still be applied, as with the driver's own timeouts).
        """
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if len(self.senders) < self.max_in_flight:
            # Not started inline: the requests already queued on the IOLoop in
            # this iteration get to join the first batch.
            sender = asyncio.ensure_future(self._send())
            self.senders.add(sender)
            sender.add_done_callback(self.senders.discard)  # also when cancelled before it ran
        if self.timeout is None:
            return await future
        # At the timeout the wait is cancelled, and with it ``future``: an item
        # still pending is not sent, the answer of one sent is dropped, even
        # one that arrived in the same loop step as the deadline. A caller
        # cancelled from outside cancels its item the same way (as without a
        # timeout). The timeout context costs half of wait_for's task and shield.
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise NetworkTimeout(f"no answer from the database within {self.timeout:g} s "
                                 "(queued behind other commands)") from None

    def _next_batch(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        """Take up to ``max_size`` pending items whose callers still wait."""
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        while self.pending and len(batch) < self.max_size:
            item, future = self.pending.pop(0)
            if not future.done():  # a cancelled caller's item is not sent
                batch.append((item, future))
        return batch

    async def _send(self) -> None:
        try:
            await self._send_batches()
        finally:
            # Leave the count in the same step as the last look at ``pending``.
            # The done callback would run a step later, and a call submitted in
            # between (by a caller this sender just woke) would still see this
            # sender counted, start none, and wait until some later call came:
            # forever, for a draining backend's or a load's last request.
            task = asyncio.current_task()
            if task is not None:
                self.senders.discard(task)

    async def _send_batches(self) -> None:
        while batch := self._next_batch():
            try:
                results = list(await self.run([item for item, _ in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.run!r} gave {len(results)} results "
                                       f"for {len(batch)} items")
            except BaseException as exc:  # the command failed, or this task was cancelled
                for _, future in batch:
                    if future.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(_own_copy(exc))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the caller was cancelled meanwhile
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
