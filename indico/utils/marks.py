"""Change marks: what the server processes of one host tell each other about changes.

A :class:`ChangeMarks` is a table of 65,536 eight-byte slots in a file that
every indico process on the host maps into memory (``INDICO_DATA_DIR/
change-marks``). A key (``"sessions:<user id>"``, ``"profile:<user id>"``)
hashes to a slot. After a process changes what a key stands for in the
database, and the database has acknowledged it, it writes a fresh random
value in the key's slot (:meth:`ChangeMarks.bump`); a process that cached
something under the value it read *before* reading the database knows the
cache is stale as soon as the slot holds another value. Reading a slot is a
memory read, no system call, so a cache checked this way costs next to
nothing and still sees every change at once.

Only :class:`indico.services.sessions.SessionStore` bumps marks, inside the
writes it performs, so the keys it caches under and the keys it bumps cannot
drift apart.

Random values rather than counters, so two processes bumping the same slot
at the same time need no lock and still both leave a value that differs
from the one before. Two keys sharing a slot only cost a needless re-read.
"""

import mmap
import os
import zlib

SLOTS = 1 << 16
SLOT_SIZE = 8
FILE_SIZE = SLOTS * SLOT_SIZE


class ChangeMarks:
    """Shared change marks, in the file at ``path`` (or private to this process if None)."""

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            self.map = mmap.mmap(-1, FILE_SIZE)
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(descriptor).st_size < FILE_SIZE:
                os.ftruncate(descriptor, FILE_SIZE)  # new slots read 0
            self.map = mmap.mmap(descriptor, FILE_SIZE)
        finally:
            os.close(descriptor)

    @staticmethod
    def _offset(key: str) -> int:
        return zlib.crc32(key.encode()) % SLOTS * SLOT_SIZE

    def read(self, key: str) -> int:
        """The current mark of ``key``: an integer that changes whenever the key is bumped."""
        offset = self._offset(key)
        return int.from_bytes(self.map[offset:offset + SLOT_SIZE], "little")

    def bump(self, key: str) -> None:
        """Tell every process that what ``key`` stands for has changed."""
        offset = self._offset(key)
        self.map[offset:offset + SLOT_SIZE] = os.urandom(SLOT_SIZE)

    def close(self) -> None:
        """Unmap the file (the marks stay in it for the other processes)."""
        self.map.close()
