"""The S3 Encryption Client readers keymigration knows, and which migrated objects each can read
with only the target KMS key. Pure: the table behind docs/formats.md's reader matrix and the
CLI's warnings (``reader_warnings``).

Each row comes from the reader's source (tests/interop drives the ones marked ``tested``):
where it looks for an envelope, whether it can be told to read ``<key><suffix>`` before the
object metadata, whether it reads a KMS envelope from an instruction file at all, and whether
it reads a ``kms+context`` envelope over AES/CBC content.
"""
from __future__ import annotations

from dataclasses import dataclass

from keymigration.formats.vocabulary import DEFAULT_INSTRUCTION_SUFFIX, Mode, WrapAlgorithm


@dataclass(frozen=True)
class Reader:
    name: str
    # Can be told to read <key><suffix> first, even while the metadata holds an envelope.
    explicit_suffix: bool
    how_explicit: str  # the option that does it, or why there is none
    # Reads a KMS envelope from an instruction file (after the metadata, or explicitly).
    kms_from_file: bool = True
    # Reads a kms+context envelope over AES/CBC content (with its legacy option where needed).
    kms_context_cbc: bool = True
    tested: bool = False


READERS: tuple[Reader, ...] = (
    Reader("Ruby aws-sdk-s3 Encryption/EncryptionV2", True,
           "get_object(envelope_location: :instruction_file, instruction_file_suffix: SUFFIX)", tested=True),
    Reader("Go v1 s3crypto", True, "LoadStrategy: s3crypto.S3LoadStrategy{InstructionFileSuffix: SUFFIX}", tested=True),
    Reader("Java v1 AmazonS3EncryptionClient(V2)", True, "EncryptedGetObjectRequest.withInstructionFileSuffix(SUFFIX)"),
    Reader("PHP S3EncryptionClientV2/V3", True, "'@MetadataStrategy' => new InstructionFileMetadataStrategy($s3, SUFFIX)"),
    Reader("Python S3EC v4", False, "InstructionFileSuffix applies only when the metadata holds no envelope", tested=True),
    Reader("Java S3EC v3/v4", False, "a custom suffix applies only when the metadata holds no envelope"),
    Reader("Go S3EC v3/v4", False, "reads <key>.instruction only, and only when the metadata holds no envelope"),
    # SetupDecryptionHandler: an instruction file is decrypted with the non-KMS materials only
    # ("on instruction file mode its non KMS wrapping key"), and a metadata envelope whose
    # context holds aws:x-amz-cek-alg must be AES/GCM/NoPadding on both sides.
    Reader(".NET Amazon.Extensions.S3.Encryption V2/V4", False, "KMS envelopes are read from object metadata only",
           kms_from_file=False, kms_context_cbc=False),
)


def finds_new_envelope(reader: Reader, mode: Mode, suffix: str) -> bool:
    """Whether ``reader`` (suitably configured) reads the KMS envelope a migration in ``mode``
    writes, for an object whose old envelope was in its metadata."""
    if mode is Mode.METADATA:  # the new envelope is in the metadata, where every reader looks first
        return True
    if not reader.kms_from_file:
        return False
    if mode is Mode.CUTOVER:  # the metadata no longer holds an envelope: every default lookup finds <key>.instruction
        return True
    return reader.explicit_suffix  # the old envelope stays in the metadata, and metadata-first readers use it


def reader_warnings(mode: Mode | str, wrap: WrapAlgorithm | str, suffix: str = DEFAULT_INSTRUCTION_SUFFIX) -> list[str]:
    """What a migration with these settings leaves known readers unable to read with only the
    target key: one sentence per reader and cause."""
    mode, wrap = Mode.parse(mode), WrapAlgorithm(wrap)
    warnings = []
    for reader in READERS:
        if not finds_new_envelope(reader, mode, suffix):
            if not reader.kms_from_file:
                warnings.append(f"{reader.name} cannot read the new KMS envelopes: {reader.how_explicit}")
            else:
                warnings.append(
                    f"{reader.name} keeps reading the old envelope from the object metadata, so it still needs the old key "
                    f"(except for objects whose envelope was in an instruction file) until a cut-over: {reader.how_explicit}"
                )
        elif wrap is WrapAlgorithm.KMS_CONTEXT and not reader.kms_context_cbc:
            warnings.append(f"{reader.name} cannot read kms+context envelopes over AES/CBC content (V1 and CBC objects)")
    return warnings


__all__ = ["READERS", "Reader", "finds_new_envelope", "reader_warnings"]
