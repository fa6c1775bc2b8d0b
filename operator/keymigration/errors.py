"""The one error tree of keymigration. Every error carries a stable ``reason`` code (reports,
status, metrics and tests key on it) and whether a retry may succeed (``retryable``)::

    KeyMigrationError                    reason, retryable
    ├── ObjectError                      one object cannot be migrated; the others go on
    │   ├── EnvelopeError                the content metadata is not a usable S3EC envelope
    │   ├── UnwrapError                  no configured source key yields the data key
    │   ├── ContentError                 the body does not decrypt with the data key
    │   ├── CutOverRefused               the object must not be copied onto itself
    │   ├── NotReadable                  a reader holding only the KMS key cannot open it
    │   ├── KmsError                     a KMS request failed
    │   └── S3Error                      an S3 request failed
    │       └── PreconditionFailed       a conditional request lost: someone else wrote
    ├── SetupError                       nothing was done: the configuration must change
    │   ├── InvalidKeyMigration          a KeyMigration's fields are invalid (each problem named)
    │   ├── KeyFileError                 a source key file is unusable
    │   ├── CheckpointError              a checkpoint is unreadable or belongs to another run
    │   └── ConfigurationError           options or environment (region, target key, endpoints)
    └── Unavailable                      nothing was done: something needed at start-up is not
                                         there yet (credentials, an endpoint, the API server,
                                         throttling); running again later may succeed

Messages name files, keys and fields, never key material.
"""
from __future__ import annotations


class KeyMigrationError(Exception):
    """Base of every error keymigration raises on purpose."""

    reason: str = "error"
    retryable: bool = False

    def __init__(self, reason: str | None = None, message: str = "", retryable: bool | None = None):
        super().__init__(message or reason or self.reason)
        if reason is not None:
            self.reason = reason
        if retryable is not None:
            self.retryable = retryable


class ObjectError(KeyMigrationError):
    """One object's outcome is ``failed`` with this reason; the run goes on."""


class EnvelopeError(ObjectError):
    pass


class UnwrapError(ObjectError):
    pass


class ContentError(ObjectError):
    pass


class CutOverRefused(ObjectError):
    pass


class NotReadable(ObjectError):
    pass


class KmsError(ObjectError):
    pass


class S3Error(ObjectError):
    pass


class PreconditionFailed(S3Error):
    """A conditional request (IfMatch, IfNoneMatch, CopySourceIfMatch) lost."""

    reason = "precondition-failed"
    retryable = True

    def __init__(self, key: str = ""):
        super().__init__(message=f"a conditional request on {key!r} lost: it changed meanwhile" if key else "")
        self.key = key


class SetupError(KeyMigrationError):
    """Found before any object was touched; the exit code says 'invalid configuration'."""

    reason = "invalid-configuration"

    def __init__(self, message: str = "", reason: str | None = None):
        super().__init__(reason, message)


class InvalidKeyMigration(SetupError):
    """An invalid KeyMigration. ``problems`` lists every reason, each naming the field."""

    reason = "invalid-keymigration"

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class Unavailable(KeyMigrationError):
    """Start-up could not reach what it needs, after the clients' own retries: no credentials yet
    (an IRSA token or the Pod Identity agent not ready), an endpoint or the Kubernetes API server
    unreachable, throttling or 5xx. Retryable: the exit code says "run again"."""

    reason = "unavailable"
    retryable = True

    def __init__(self, message: str = ""):
        super().__init__(None, message)


class KeyFileError(SetupError):
    reason = "key-file"


class CheckpointError(SetupError):
    reason = "checkpoint"


class ConfigurationError(SetupError):
    reason = "configuration"


__all__ = [
    "CheckpointError",
    "ConfigurationError",
    "ContentError",
    "CutOverRefused",
    "EnvelopeError",
    "InvalidKeyMigration",
    "KeyFileError",
    "KeyMigrationError",
    "KmsError",
    "NotReadable",
    "ObjectError",
    "PreconditionFailed",
    "S3Error",
    "SetupError",
    "Unavailable",
    "UnwrapError",
]
