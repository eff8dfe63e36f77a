"""Failures dewy expects and reports in one line; anything else is a bug (exit 1)."""


class DewyError(Exception):
    """An expected failure whose message is written for the operator."""


class UsageError(DewyError):
    """Bad flags, URLs or configuration: dewy refuses to start (exit code 2)."""


class RegistryError(DewyError):
    """The registry could not be asked, or answered something unusable."""


class ArtifactNotReady(RegistryError):
    """The newest release has no matching artifact yet, but is young enough that CI may still be uploading."""


class ArtifactError(DewyError):
    """The artifact could not be fetched or failed verification."""


class ArchiveError(DewyError):
    """The archive is broken or tries to write outside its release directory."""


class CorruptArchive(ArchiveError):
    """The archive is cut off or garbled: a bad copy to fetch again, not a release to keep refusing."""


class HookError(DewyError):
    """A deploy hook exited non-zero or timed out."""

    output: str = ""  # the end of what the hook printed, quoted in notifications


class AppStartError(DewyError):
    """A new app generation exited or failed its health check before becoming ready."""


class CacheError(DewyError):
    """A shared cache (Redis, Consul) could not be reached or refused the request."""
