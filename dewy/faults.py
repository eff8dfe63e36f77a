"""Any exception of a deploy cycle as one line for the operator: what failed, where, what to do.

A cycle must never end dewy: an expected failure (DewyError) is reported as it is, a disk
fault names the directory and the remedy, and anything else is still one line (its
traceback goes to the debug log), counted and retried like the rest.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dewy.errors import CacheError, DewyError, RegistryError

# Faults of the filesystem itself (not of a network peer, which also raises OSError), with what to do.
DISK_ADVICE = {
    errno.ENOSPC: "free space on that filesystem",
    errno.EDQUOT: "raise the disk quota or free space",
    errno.EIO: "the device reports I/O errors: check it (dmesg)",
    errno.EROFS: "the filesystem is read-only: remount it read-write",
    errno.EACCES: "give dewy's user write access to it",
    errno.EPERM: "give dewy's user write access to it",
}


class DiskError(DewyError):
    """A directory dewy writes to (cache, releases/, the state file) failed; dewy retries with backoff."""


@contextmanager
def on_disk(path: Path, what: str) -> Iterator[None]:
    """Turn a disk fault inside the block into a DiskError naming ``path`` (a write error has no filename)."""
    try:
        yield
    except (OSError, DewyError) as caught:
        exc = caught if isinstance(caught, OSError) else caught.__cause__  # e.g. an archive member's write
        if not isinstance(exc, OSError) or exc.errno not in DISK_ADVICE:
            raise
        raise DiskError(f"cannot write {what} in {path}: {exc.strerror}; {DISK_ADVICE[exc.errno]} "
                        "(dewy retries, the running version keeps serving)") from None


def describe(exc: BaseException) -> str:
    """One line for any exception: DewyErrors carry theirs; anything else is named as an internal error."""
    if isinstance(exc, DewyError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:  # a system call's failure, not dewy's bug
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return f"internal error {type(exc).__name__}{': ' + detail if detail else ''} (the debug log has the traceback)"


def kind_of(exc: BaseException) -> str:
    """A short class of failure, for a metric's label: rate-limited, timeout, registry, cache, disk, os or internal."""
    if getattr(exc, "retry_after", None):
        return "rate-limited"
    for kind, types in (("timeout", TimeoutError), ("disk", DiskError), ("cache", CacheError),
                        ("registry", RegistryError), ("os", OSError)):
        if isinstance(exc, types):
            return kind
    return "other" if isinstance(exc, DewyError) else "internal"
