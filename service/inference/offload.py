"""Bulk numpy work goes to a thread, small work stays on the event loop.

The event loop serves every connection of the process (accepting new ones included: uvloop's libuv accepts
one connection per loop iteration), so a request's CPU work on it delays everyone else's request by as much.
Work over `INLINE_ELEMENTS` array elements (about a millisecond of numpy) runs in a thread instead, where it
competes for the cores without holding the loop (numpy releases the GIL in its array loops and random
fills). Smaller work stays inline: the thread hop costs ~50 us, about what encoding a 28x28 PNG costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

INLINE_ELEMENTS = 64 * 1024


async def off_loop(elements: int, fn: Callable[..., T], *args: object) -> T:
    """fn(*args), in a thread when it touches more than INLINE_ELEMENTS array elements."""
    if elements <= INLINE_ELEMENTS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
