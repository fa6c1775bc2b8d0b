"""The words every layer shares: how a data key is wrapped, where the new envelope goes, how
much is verified, and the one check of a migration target (mode + instruction-file suffix).

Pure: the CLI, the KeyMigration API types and the re-wrap options all call ``check_target``, so
a suffix or mode refused in one place is refused in all of them with the same words.
"""
from __future__ import annotations

import re
from enum import Enum
from typing import TypeVar

from keymigration.errors import ConfigurationError

##= docs/spec/s3-encryption/data-format/metadata-strategy.md#instruction-file
##% The default Instruction File behavior uses the same S3 object key as its associated object suffixed with ".instruction".
DEFAULT_INSTRUCTION_SUFFIX = ".instruction"
# Backups of replaced envelopes: <key>.instruction.keymigration-backup (an instruction file,
# byte for byte) and <key>.keymigration-backup (an envelope removed from object metadata).
# Each migration of an object is one step of a chain; step n > 1 (a rotation) names its
# backups <name>.keymigration-backup.<n>, so no migration overwrites another's backup.
BACKUP_SUFFIX = ".keymigration-backup"
BACKUP_PATTERN = r"\.keymigration-backup(\.[1-9][0-9]{0,5})?$"
SUFFIX_PATTERN = r"^\.[A-Za-z0-9._-]{1,64}$"


def backup_name(name: str, step: int = 1) -> str:
    """The backup of ``name`` (an object, for its metadata envelope, or an instruction file)
    taken by migration step ``step`` of that object."""
    return name + BACKUP_SUFFIX + (f".{step}" if step > 1 else "")


def is_backup_name(name: str) -> bool:
    return re.search(BACKUP_PATTERN, name) is not None


E = TypeVar("E", bound=Enum)


def _parse(cls: type[E], value: object, what: str) -> E:
    try:
        return cls(value)
    except ValueError:
        raise ConfigurationError(f"{what} must be one of {', '.join(m.value for m in cls)}, not {value!r}") from None


##= docs/spec/s3-encryption/data-format/content-metadata.md#v2-v3-shared
##= type=citation
##% The algorithm used to encrypt the data key.
##% The valid values are:
##% - AES/GCM
##% - AESWrap
##% - kms+context
##% - kms
##% - RSA/ECB/OAEPWithSHA-256AndMGF1Padding
##% - RSA-OAEP-SHA1
class WrapAlgorithm(str, Enum):
    """How the data key is wrapped. LEGACY is V1's absent x-amz-wrap-alg (AES/ECB or RSA PKCS#1)."""

    LEGACY = "legacy"
    AES_WRAP = "AESWrap"
    AES_GCM = "AES/GCM"
    RSA_OAEP_SHA256 = "RSA/ECB/OAEPWithSHA-256AndMGF1Padding"
    RSA_OAEP_SHA1 = "RSA-OAEP-SHA1"
    KMS = "kms"
    KMS_CONTEXT = "kms+context"

    @property
    def is_kms(self) -> bool:
        return self in (WrapAlgorithm.KMS, WrapAlgorithm.KMS_CONTEXT)

    def __str__(self) -> str:
        return self.value


class Mode(str, Enum):
    """Where the new envelope goes. The value is the CLI's spelling (and the checkpoint's);
    ``api_name`` the KeyMigration's."""

    INSTRUCTION_FILE = "instruction-file"  # <key><suffix> only; the object is not touched
    CUTOVER = "cutover"  # also strip the old envelope from the object's metadata
    METADATA = "metadata"  # the new envelope replaces the old one in the object's metadata

    @property
    def api_name(self) -> str:
        return {Mode.INSTRUCTION_FILE: "InstructionFile", Mode.CUTOVER: "CutOver", Mode.METADATA: "Metadata"}[self]

    @property
    def copies_objects(self) -> bool:
        """The mode rewrites objects in place (CopyObject onto themselves)."""
        return self is not Mode.INSTRUCTION_FILE

    @classmethod
    def from_api_name(cls, name: str) -> "Mode":
        for mode in cls:
            if mode.api_name == name:
                return mode
        raise ConfigurationError(f"unknown mode {name!r}; use one of {', '.join(m.api_name for m in cls)}")

    @classmethod
    def parse(cls, value: "str | Mode") -> "Mode":
        return _parse(cls, value, "mode")

    def __str__(self) -> str:
        return self.value


class VerifyLevel(str, Enum):
    """How much is proven before a new envelope is written."""

    NONE = "none"  # the unwrap's own proof only
    # the new envelope checked locally (parsed back, target key ARN, wrap, context); KMS opens
    # it for the first object and a random share (--verify-sample-rate) of the others
    SAMPLE = "sample"
    ENVELOPE = "envelope"  # checked locally, and KMS opens every new envelope exactly as it will be read
    BODY = "body"  # also decrypt the whole body with the data key

    @classmethod
    def parse(cls, value: "str | VerifyLevel") -> "VerifyLevel":
        return _parse(cls, value, "verify")

    def __str__(self) -> str:
        return self.value


DEFAULT_SAMPLE_RATE = 0.01  # --verify sample: the share of objects KMS opens the new envelope of


def check_sample_rate(rate: object) -> float:
    """The share of objects ``--verify sample`` sends through KMS: a number from 0 to 1."""
    try:
        value = float(rate)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"verify sample rate must be a number from 0 to 1, not {rate!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"verify sample rate must be from 0 to 1, not {rate!r}")
    return value


##= docs/spec/s3-encryption/data-format/metadata-strategy.md#instruction-file
##= type=implication
##% The S3EC MUST NOT support providing a custom Instruction File suffix on ordinary writes; custom suffixes MUST only be used during re-encryption.
# (Every keymigration write is a re-encryption: a custom suffix is allowed where readers find it.)
def check_target(mode: "Mode | str", suffix: str, *, api_names: bool = False) -> Mode:
    """The one check of where a migration writes. Returns the mode; raises ConfigurationError
    naming the problem (callers prefix the field or flag). ``api_names``: ``mode`` and the
    message use the KeyMigration's spelling (``CutOver``), else the CLI's (``cutover``)."""
    mode = Mode.from_api_name(mode) if api_names and not isinstance(mode, Mode) else Mode.parse(mode)
    name = mode.api_name if api_names else mode.value
    if not isinstance(suffix, str) or not re.match(SUFFIX_PATTERN, suffix):
        raise ConfigurationError(
            f"invalid instruction-file suffix {suffix!r}: a dot and 1-64 characters of A-Z a-z 0-9 . _ -"
        )
    if BACKUP_SUFFIX in suffix:
        raise ConfigurationError(f"instruction-file suffix {suffix!r}: {BACKUP_SUFFIX} is reserved for backups")
    if mode is Mode.CUTOVER and suffix != DEFAULT_INSTRUCTION_SUFFIX:
        # Go S3EC v3/v4 reads only <key>.instruction, and every default lookup tries it.
        raise ConfigurationError(
            f"mode {name} writes {DEFAULT_INSTRUCTION_SUFFIX} (the only suffix default lookups try); "
            f"the suffix cannot be {suffix!r}"
        )
    return mode


__all__ = [
    "BACKUP_PATTERN",
    "BACKUP_SUFFIX",
    "DEFAULT_INSTRUCTION_SUFFIX",
    "DEFAULT_SAMPLE_RATE",
    "Mode",
    "SUFFIX_PATTERN",
    "VerifyLevel",
    "WrapAlgorithm",
    "backup_name",
    "check_sample_rate",
    "check_target",
    "is_backup_name",
]
