"""S3 Encryption Client formats and crypto, pure (no I/O): envelopes (detect, parse, serialize),
unwrapping data keys with old AES/RSA master keys, decrypting bodies to prove a key, the old
master key files, secret containers, and the shared vocabulary. The S3EC specification lives
here: rules carry ``##=``/``##%`` citations (docs/architecture.md)."""

from keymigration.formats.content import check_cbc_tail, check_commitment, decrypt_stream, verify_body
from keymigration.formats.envelope import (
    Envelope,
    Location,
    MetadataKind,
    detect,
    from_instruction_file,
    from_metadata,
    instruction_body,
    target_fields,
)
from keymigration.formats.readers import READERS, Reader, reader_warnings
from keymigration.formats.secrets import DataKey, SecretBytes
from keymigration.formats.source_keys import AesMasterKey, MasterKey, RsaMasterKey, load_key_bytes, load_key_files
from keymigration.formats.unwrap import Unwrapped, unwrap_data_key
from keymigration.formats.vocabulary import (
    BACKUP_SUFFIX,
    DEFAULT_INSTRUCTION_SUFFIX,
    DEFAULT_SAMPLE_RATE,
    Mode,
    VerifyLevel,
    WrapAlgorithm,
    check_target,
)

__all__ = [
    "BACKUP_SUFFIX",
    "DEFAULT_INSTRUCTION_SUFFIX",
    "DEFAULT_SAMPLE_RATE",
    "READERS",
    "AesMasterKey",
    "DataKey",
    "Envelope",
    "Location",
    "MasterKey",
    "MetadataKind",
    "Mode",
    "Reader",
    "RsaMasterKey",
    "SecretBytes",
    "Unwrapped",
    "VerifyLevel",
    "WrapAlgorithm",
    "check_cbc_tail",
    "check_commitment",
    "check_target",
    "decrypt_stream",
    "detect",
    "from_instruction_file",
    "from_metadata",
    "instruction_body",
    "load_key_bytes",
    "load_key_files",
    "reader_warnings",
    "target_fields",
    "unwrap_data_key",
    "verify_body",
]
