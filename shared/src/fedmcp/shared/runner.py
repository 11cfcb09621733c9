"""Running a service's main coroutine: on uvloop where it is installed (Linux, macOS)."""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    use_uvloop = importlib.util.find_spec("uvloop") is not None
    return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
