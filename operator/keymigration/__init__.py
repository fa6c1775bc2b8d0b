"""keymigration: re-wrap Amazon S3 client-side-encryption data keys under AWS KMS.

The package is layered; each layer imports only the ones below it (docs/architecture.md,
enforced by ``lint-imports``)::

    cli                 the ``keymigration`` command; the only module that wires layers together
    kube | demo         Kubernetes operator (API types, CRDs, Jobs, reconcile) | the embedded demo
    migrate             the migration engine: per-object steps, listing, worker, checkpoints
    aws                 S3 and KMS calls, clients, rate limiting
    formats             S3 Encryption Client formats and crypto: pure, no I/O
    errors | logs       one error tree | logging set-up
    clock               UTC timestamps

This module exports the shared vocabulary and the error tree; each subpackage exports its own
small surface.
"""

from keymigration.errors import (
    CheckpointError,
    ConfigurationError,
    ContentError,
    CutOverRefused,
    EnvelopeError,
    InvalidKeyMigration,
    KeyFileError,
    KeyMigrationError,
    KmsError,
    NotReadable,
    ObjectError,
    PreconditionFailed,
    S3Error,
    SetupError,
    Unavailable,
    UnwrapError,
)
from keymigration.formats.vocabulary import Mode, VerifyLevel, WrapAlgorithm

__version__ = "0.1.0"

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
    "Mode",
    "NotReadable",
    "ObjectError",
    "PreconditionFailed",
    "S3Error",
    "SetupError",
    "Unavailable",
    "UnwrapError",
    "VerifyLevel",
    "WrapAlgorithm",
    "__version__",
]
