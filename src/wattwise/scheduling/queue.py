"""A two-class priority queue: interactive requests go before batch work, FIFO within a class.

Usage::

    queue = PriorityQueue()
    queue.push("b1", priority=BATCH)
    queue.push("i1", priority=INTERACTIVE)
    queue.pop()        # "i1"
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

INTERACTIVE, BATCH = 0, 1
PRIORITIES = {"interactive": INTERACTIVE, "batch": BATCH}

T = TypeVar("T")


class PriorityQueue(Generic[T]):
    """Interactive before batch; ``peek_priority`` tells which class waits at the head."""

    __slots__ = ("_classes",)

    def __init__(self) -> None:
        self._classes: tuple[deque[T], deque[T]] = (deque(), deque())

    def push(self, item: T, *, priority: int) -> None:
        self._classes[priority].append(item)

    def pop(self) -> T | None:
        for waiting in self._classes:
            if waiting:
                return waiting.popleft()
        return None

    def push_front(self, item: T, *, priority: int) -> None:
        """Put an item back at the head of its class (it was popped but could not be placed)."""
        self._classes[priority].appendleft(item)

    def waiting(self, priority: int) -> int:
        return len(self._classes[priority])

    def __len__(self) -> int:
        return len(self._classes[0]) + len(self._classes[1])
