"""Argon2id password hashing, always in an executor, never on the IOLoop.

Parameters default to OWASP's (m=19 MiB, t=2, p=1) and come from the config.
Verification of an unknown email runs against a dummy hash made with the same
parameters, so both failures cost the same time.
"""

import asyncio
import concurrent.futures
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from config import Config

Value = TypeVar("Value")


class Passwords:
    """Hash and verify passwords in ``executor`` with the configured parameters.

    Args:
        config: the Config (``argon2_memory_kib``, ``argon2_time_cost``,
            ``argon2_parallelism``).
        executor: a concurrent.futures executor for the CPU work.
    """

    def __init__(self, config: Config, executor: concurrent.futures.Executor | None) -> None:
        self.hasher = argon2.PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
            type=argon2.Type.ID,
        )
        self.executor = executor
        self.dummy_hash: str | None = None

    async def _run(self, function: Callable[..., Value], *args: Any) -> Value:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def hash(self, password: str) -> str:
        """Return the Argon2id hash of ``password``."""
        return await self._run(self.hasher.hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with ``password_hash`` None, burn the same time."""
        if password_hash is None:
            if self.dummy_hash is None:
                self.dummy_hash = await self.hash(secrets.token_urlsafe(16))
            await self._run(self._verify, self.dummy_hash, password)
            return False
        return await self._run(self._verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        return self.hasher.check_needs_rehash(password_hash)
