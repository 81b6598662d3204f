"""`Queue`: a first-in first-out queue shared by tasks and actors (Ray's ray.util.queue).

Backed by an async actor holding an `asyncio.Queue`; the handle pickles, so any task or
actor can put and get.
"""

from __future__ import annotations

import asyncio
import queue as _queue
from typing import Any

import carme


class Empty(_queue.Empty):
    pass


class Full(_queue.Full):
    pass


class _QueueActor:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full from None

    async def put_batch(self, items: list, timeout: float | None = None) -> None:
        for item in items:
            await self.put(item, timeout)

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty from None

    def put_nowait(self, item: Any) -> None:
        self.queue.put_nowait(item)

    def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size {self.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self) -> Any:
        return self.queue.get_nowait()

    def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]


class Queue:
    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0: unbounded), not {maxsize!r}")
        self.maxsize = maxsize
        self.actor = carme.remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        return self.qsize()

    def qsize(self) -> int:
        return int(carme.get(self.actor.qsize.remote()))

    def empty(self) -> bool:
        return bool(carme.get(self.actor.empty.remote()))

    def full(self) -> bool:
        return bool(carme.get(self.actor.full.remote()))

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            try:
                carme.get(self.actor.put_nowait.remote(item))
            except asyncio.QueueFull:
                raise Full from None
            return
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        carme.get(self.actor.put.remote(item, timeout))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            try:
                await self.actor.put_nowait.remote(item)
            except asyncio.QueueFull:
                raise Full from None
            return
        await self.actor.put.remote(item, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            try:
                return carme.get(self.actor.get_nowait.remote())
            except asyncio.QueueEmpty:
                raise Empty from None
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        return carme.get(self.actor.get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            try:
                return await self.actor.get_nowait.remote()
            except asyncio.QueueEmpty:
                raise Empty from None
        return await self.actor.get.remote(timeout)

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items: list) -> None:
        if not isinstance(items, list):
            raise TypeError("Argument 'items' must be a list")
        carme.get(self.actor.put_nowait_batch.remote(items))

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        if not isinstance(num_items, int) or num_items < 0:
            raise ValueError("'num_items' must be a non-negative int")
        return list(carme.get(self.actor.get_nowait_batch.remote(num_items)))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        if self.actor is not None:
            carme.kill(self.actor)
        self.actor = None
