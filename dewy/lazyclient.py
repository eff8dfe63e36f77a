"""A blocking SDK client (boto3, google-cloud-storage) made on first use, in the worker thread that needs it.

Making one reads config files or asks a metadata server, so it must not happen at
import, at startup validation, or on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LazyClient(Generic[T]):
    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._client: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._client is None:
                self._client = self._make()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
