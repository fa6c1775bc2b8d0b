"""Reading an object with only the KMS key, as an S3EC reader would. Used by ``verify``.

Two lookups, matching the reader families (docs/formats.md, "Which reader reads a migrated
object"; formats/readers.py):
* ``explicit`` (Java v1 ``withInstructionFileSuffix``, Ruby ``instruction_file_suffix``, Go v1
  ``S3LoadStrategy``, PHP ``InstructionFileMetadataStrategy``): the envelope comes from
  ``<key><suffix>`` only.
* ``default`` (Java S3EC v3/v4, Python v4, Go S3EC; every reader without an explicit suffix):
  object metadata if it holds an envelope, else ``<key>.instruction``, as the specification says
  (cited at ``locate``). .NET reads KMS envelopes from metadata only: neither lookup is its.
"""
from __future__ import annotations

from typing import Iterator

from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.errors import EnvelopeError, NotReadable, S3Error
from keymigration.formats import envelope as env_mod
from keymigration.formats.content import decrypt_stream
from keymigration.formats.envelope import Envelope, MetadataKind
from keymigration.formats.vocabulary import DEFAULT_INSTRUCTION_SUFFIX

# Python S3EC v4 refuses an instruction-file read when the first three linger in the object
# metadata, and merges the others over the file (a stale context would reach KMS).
LEFTOVER_BLOCKING_KEYS = (env_mod.IV, env_mod.CEK_ALG, env_mod.WRAP_ALG, env_mod.MATDESC, env_mod.ENCRYPTION_CONTEXT_V3)


##= docs/spec/s3-encryption/data-format/content-metadata.md#determining-s3ec-object-status
##% If the object matches none of the V1/V2/V3 formats, the S3EC MUST attempt to get the instruction file.
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#instruction-file
##% The S3EC SHOULD support providing a custom Instruction File suffix on GetObject requests, regardless of whether or not re-encryption is supported.
def locate(bucket: Bucket, key: str, metadata: dict[str, str], suffix: str | None) -> Envelope:
    """The envelope a reader would use: ``suffix`` set = explicit lookup, None = default."""
    metadata = env_mod.lower_keys(metadata)
    try:
        if suffix is None:
            kind = env_mod.detect(metadata)
            if kind is MetadataKind.ENVELOPE:
                return env_mod.from_metadata(metadata)
            name = key + DEFAULT_INSTRUCTION_SUFFIX
            leftovers = [k for k in LEFTOVER_BLOCKING_KEYS if k in metadata]
            if leftovers:
                raise NotReadable("leftover-metadata", f"metadata still holds {', '.join(leftovers)}; Python S3EC v4 refuses it")
        else:
            name = key + suffix
        stored = bucket.get_small(name)
        if stored is None:
            if not env_mod.has_envelope_keys(metadata) and (
                name == key + DEFAULT_INSTRUCTION_SUFFIX
                or bucket.get_small(key + DEFAULT_INSTRUCTION_SUFFIX) is None
            ):
                raise NotReadable("not-encrypted", "no S3EC envelope in metadata and no instruction file")
            raise NotReadable("missing-instruction-file", f"{name!r} does not exist")
        return env_mod.from_instruction_file(stored.body, metadata)
    except EnvelopeError as error:
        raise NotReadable(error.reason, str(error)) from None


def kms_data_key(kms: KmsKeys, envelope: Envelope):
    """Decrypt the data key with the target key, with the reader-side context checks."""
    if not envelope.wrap.is_kms:
        raise NotReadable("not-kms", f"the envelope is wrapped with {envelope.wrap}, not KMS")
    # (Parsing already refused a kms+context envelope whose aws:x-amz-cek-alg is not its content
    # cipher, as Go, PHP, Java v1's V2 client and Ruby do: envelope.check_bound_cek_alg.)
    return kms.decrypt(envelope.encrypted_key, envelope.context, kms.target_key_id)


def decrypt_object(bucket: Bucket, kms: KmsKeys, key: str, suffix: str | None) -> Iterator[bytes]:
    """Plaintext of the object, read with only the KMS key (raises NotReadable, KmsError...).

    One GET gives both the metadata and the body, as the S3EC clients do it."""
    opened = bucket.open(key)
    if opened is None:
        raise NotReadable("object-deleted", "the object does not exist")
    metadata, chunks = opened
    try:
        envelope = locate(bucket, key, metadata, suffix)
        data_key = kms_data_key(kms, envelope)
        yield from decrypt_stream(envelope, data_key, chunks)
    finally:
        chunks.close()


def read_object(bucket: Bucket, kms: KmsKeys, key: str, suffix: str | None) -> bytes:
    return b"".join(decrypt_object(bucket, kms, key, suffix))


__all__ = ["NotReadable", "S3Error", "decrypt_object", "locate", "read_object"]
