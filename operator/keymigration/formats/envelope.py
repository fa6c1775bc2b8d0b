"""S3 Encryption Client content metadata ("envelopes"): detection, parsing, serialization.

Pure code, no I/O. Rules cite the S3EC specification the way the official clients do: ``##=``
names the section of the excerpt kept in ``docs/spec/`` (awslabs/aws-encryption-sdk-specification,
``s3-encryption/data-format/content-metadata.md`` and ``metadata-strategy.md``), ``##%`` quotes
the requirement (checked by tests/unit/test_spec_citations.py). What the specification leaves
open follows the real clients: the project's reference is ``docs/formats.md``.
"""
from __future__ import annotations

import base64
import binascii
import email.header
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from keymigration.errors import ConfigurationError, EnvelopeError
from keymigration.formats.vocabulary import WrapAlgorithm

##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##= type=implication
##% The "x-amz-meta-" prefix is automatically added by the S3 server and MUST NOT be included in implementation code.
##% The "x-amz-" prefix denotes that the metadata is owned by an Amazon product and MUST be prepended to all S3EC metadata mapkeys.
# (boto3 returns user metadata without "x-amz-meta-", keys lower-cased.)
KEY_V1 = "x-amz-key"
KEY_V2 = "x-amz-key-v2"
IV = "x-amz-iv"
MATDESC = "x-amz-matdesc"
WRAP_ALG = "x-amz-wrap-alg"
CEK_ALG = "x-amz-cek-alg"
TAG_LEN = "x-amz-tag-len"
UNENCRYPTED_LENGTH = "x-amz-unencrypted-content-length"
INSTRUCTION_FILE_MARKER = "x-amz-crypto-instr-file"
# V3 (compressed) mapkeys.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##= type=implication
##% This mapkey ("x-amz-c") SHOULD be represented by a constant named "CONTENT_CIPHER_V3" or similar in the implementation code.
CONTENT_CIPHER_V3 = "x-amz-c"
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##= type=implication
##% This mapkey ("x-amz-3") SHOULD be represented by a constant named "ENCRYPTED_DATA_KEY_V3" or similar in the implementation code.
ENCRYPTED_DATA_KEY_V3 = "x-amz-3"
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##= type=implication
##% This mapkey ("x-amz-m") SHOULD be represented by a constant named "MAT_DESC_V3" or similar in the implementation code.
MAT_DESC_V3 = "x-amz-m"
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##= type=implication
##% This mapkey ("x-amz-t") SHOULD be represented by a constant named "ENCRYPTION_CONTEXT_V3" or similar in the implementation code.
ENCRYPTION_CONTEXT_V3 = "x-amz-t"
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##= type=implication
##% This mapkey ("x-amz-w") SHOULD be represented by a constant named "ENCRYPTED_DATA_KEY_ALGORITHM_V3" or similar in the implementation code.
ENCRYPTED_DATA_KEY_ALGORITHM_V3 = "x-amz-w"
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##= type=implication
##% This mapkey ("x-amz-d") SHOULD be represented by a constant named "KEY_COMMITMENT_V3" or similar in the implementation code.
KEY_COMMITMENT_V3 = "x-amz-d"
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##= type=implication
##% This mapkey ("x-amz-i") SHOULD be represented by a constant named "MESSAGE_ID_V3" or similar in the implementation code.
MESSAGE_ID_V3 = "x-amz-i"

# The mapkeys exclusive to one format version each (see detect).
EXCLUSIVE_KEYS = (KEY_V1, KEY_V2, ENCRYPTED_DATA_KEY_V3)
V1_V2_KEYS = (KEY_V1, KEY_V2, IV, MATDESC, WRAP_ALG, CEK_ALG, TAG_LEN)
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% In the V3 format, the mapkeys "x-amz-c", "x-amz-d", and "x-amz-i" MUST be stored exclusively in the Object Metadata.
V3_OBJECT_ONLY_KEYS = (CONTENT_CIPHER_V3, KEY_COMMITMENT_V3, MESSAGE_ID_V3)
V3_INSTRUCTION_KEYS = (ENCRYPTED_DATA_KEY_V3, ENCRYPTED_DATA_KEY_ALGORITHM_V3, MAT_DESC_V3, ENCRYPTION_CONTEXT_V3)
ALL_ENVELOPE_KEYS = V1_V2_KEYS + V3_OBJECT_ONLY_KEYS + V3_INSTRUCTION_KEYS
# Keys other writers put in instruction files that carry no key material: accepted on read,
# never written (Python S3EC v4 rejects x-amz-unencrypted-content-length in a file).
TOLERATED_INSTRUCTION_KEYS = (UNENCRYPTED_LENGTH, INSTRUCTION_FILE_MARKER)

MAX_INSTRUCTION_FILE_BYTES = 64 * 1024

CBC = "AES/CBC/PKCS5Padding"
GCM = "AES/GCM/NoPadding"
SUITE_115 = "115"  # ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY, decimal of 0x0073
# Go v1 s3crypto with NewPKCS7Padder writes "AES/CBC/PKCS7Padding" for the same cipher (Ruby
# reads both names; Go and Python accept only PKCS5).
_CEK_ALIASES = {CBC: CBC, "AES/CBC/PKCS7Padding": CBC, GCM: GCM}

# The reserved keys of a KMS encryption context: "the two reserved keys" of s3-kms-keyring.md,
# which the specification does not name; every client uses these two.
KMS_CEK_ALG = "aws:x-amz-cek-alg"  # the content cipher, bound into the kms+context context
KMS_CMK_ID = "kms_cmk_id"  # the legacy kms wrap's key id (Java v1 KMSEncryptionMaterials)
RESERVED_CONTEXT_KEYS = (KMS_CEK_ALG, KMS_CMK_ID)



##= docs/spec/s3-encryption/data-format/content-metadata.md#v3-only
##% - The wrapping algorithm value "02" MUST be translated to AES/GCM upon retrieval, and vice versa on write.
##= docs/spec/s3-encryption/data-format/content-metadata.md#v3-only
##% - The wrapping algorithm value "12" MUST be translated to kms+context upon retrieval, and vice versa on write.
##= docs/spec/s3-encryption/data-format/content-metadata.md#v3-only
##% - The wrapping algorithm value "22" MUST be translated to RSA-OAEP-SHA1 upon retrieval, and vice versa on write.
V3_WRAP_CODES = {"02": WrapAlgorithm.AES_GCM, "12": WrapAlgorithm.KMS_CONTEXT, "22": WrapAlgorithm.RSA_OAEP_SHA1}
V3_WRAP_CODE_OF = {alg: code for code, alg in V3_WRAP_CODES.items()}


class Location(str, Enum):
    METADATA = "metadata"
    INSTRUCTION_FILE = "instruction-file"

    def __str__(self) -> str:
        return self.value



@dataclass(frozen=True)
class Envelope:
    """One object's S3EC envelope, decoded. Holds only public values (the EDK is wrapped)."""

    format: str  # "v1" | "v2" | "v3"
    encrypted_key: bytes = field(repr=False)
    wrap: WrapAlgorithm
    cek_alg: str  # normalized: CBC, GCM or SUITE_115
    context: dict[str, str]  # materials description (AES/RSA) or KMS encryption context
    location: Location
    iv: bytes | None = None  # V1/V2 content IV
    message_id: bytes | None = None  # V3 x-amz-i
    commitment: bytes | None = None  # V3 x-amz-d
    unencrypted_length: int | None = None
    raw_cek_alg: str | None = None  # as stored; None when absent (V1)
    raw_wrap_alg: str | None = None  # as stored (V3: the two-digit code)

    @property
    def is_gcm(self) -> bool:
        return self.cek_alg in (GCM, SUITE_115)

    @property
    def cipher_identifier(self) -> str:
        """The string bound into AES/GCM AAD, RSA-OAEP-SHA1 pseudo keys and kms+context ECs."""
        return self.cek_alg

    def summary(self) -> dict[str, str]:
        return {"format": self.format, "wrap": str(self.wrap), "cek_alg": self.cek_alg, "location": str(self.location)}


# ---------------------------------------------------------------------------------------------
# Decoding helpers


def b64decode(value: object, name: str) -> bytes:
    """Standard base64; whitespace tolerated (Ruby's encode64 wraps lines), nothing else."""
    if not isinstance(value, str):
        raise EnvelopeError("malformed-envelope", f"{name} is not a string")
    compact = "".join(value.split())
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("malformed-envelope", f"{name} is not valid base64") from None
    if not decoded:
        raise EnvelopeError("malformed-envelope", f"{name} is empty")
    return decoded


def b64encode(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


##= docs/spec/s3-encryption/data-format/content-metadata.md#v1-v2-shared
##= type=citation
##% This string MAY be encoded by the esoteric double-encoding scheme used by the S3 web server.
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#object-metadata
##% The S3EC SHOULD support decoding the S3 Server's "double encoding".
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#object-metadata
##% If the S3EC does not support decoding the S3 Server's "double encoding" then it MUST return the content metadata untouched.
def decode_metadata_value(value: str) -> str:
    """A materials description or encryption context as S3 returned it in object metadata,
    decoded the way the Java S3EC (``ContentMetadataDecodingStrategy.decodeS3CustomEncoding``)
    decodes it.

    A writer sends the UTF-8 bytes of a non-ASCII value; S3 reads each byte as an ISO-8859-1
    character and returns the value RFC 2047-encoded ("=?UTF-8?B?...?="), as UTF-8 of those
    characters: ``café`` comes back as ``=?UTF-8?B?Y2Fmw4PCqQ==?=``, "cafÃ©" once MIME-decoded.
    A server that returns the raw bytes instead (moto, some S3-compatible stores) reaches us
    through http.client as the same "cafÃ©". Java first MIME-decodes, then turns each run of
    non-ASCII characters back into the bytes they were read from and decodes those as UTF-8
    (:func:`_undo_latin1_reading`). Where that yields no valid UTF-8 (a value that was not
    double-encoded; Java would produce U+FFFD), the MIME-decoded value is kept untouched.
    ASCII values pass through unchanged. Only for object metadata: instruction files are
    plain UTF-8 JSON.
    """
    decoded = _mime_decode(value)
    if decoded.isascii():
        return decoded
    try:
        return _undo_latin1_reading(decoded)
    except ValueError:
        return decoded


def _mime_decode(value: str) -> str:
    """RFC 2047 encoded words decoded (Jakarta ``MimeUtility.decodeText``); other text kept."""
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
        out = []
        for chunk, charset in parts:
            if isinstance(chunk, str):
                out.append(chunk)
            else:  # unencoded parts come back as raw-unicode-escape bytes
                out.append(chunk.decode(charset or "raw-unicode-escape", errors="strict"))
        return "".join(out)
    except (ValueError, LookupError):
        return value


def _undo_latin1_reading(text: str) -> str:
    """Java S3EC's second pass, step for step: for each UTF-16 unit above 127 it takes two bytes
    of the text's UTF-8 form (at the unit's index plus the number of such units before it),
    decodes them, and keeps the low byte of the first character; each run of kept bytes is
    decoded as UTF-8 at the next ASCII character; a run at the very end is dropped (JSON always
    ends in "}"). Raises ValueError where Java would throw or produce U+FFFD."""
    data = text.encode("utf-8", "replace")  # String.getBytes(UTF_8)
    units = text.encode("utf-16-be", "surrogatepass")
    out: list[str] = []
    run = bytearray()
    shifted = 0
    for index in range(len(units) // 2):
        unit = int.from_bytes(units[2 * index : 2 * index + 2], "big")
        if unit > 127:
            pair = data[index + shifted : index + shifted + 2]
            if len(pair) < 2:
                raise ValueError("index out of bounds")  # Java: ArrayIndexOutOfBoundsException
            first = pair.decode("utf-8", "replace")[0]
            run.append(ord(first) & 0xFF)  # DataOutputStream.write(int): the low byte
            shifted += 1
        else:
            if run:
                out.append(bytes(run).decode("utf-8"))  # strict: U+FFFD in Java
                run.clear()
            out.append(chr(unit))
    return "".join(out)


def parse_context(value: str | None, name: str, in_metadata: bool = False) -> dict[str, str]:
    """A materials description / encryption context: a JSON object of strings; default {}.
    ``in_metadata``: the value came from object metadata, where S3 may have double-encoded it."""
    if value is None:
        return {}
    try:
        parsed = json.loads(decode_metadata_value(value) if in_metadata else value)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("malformed-envelope", f"{name} is not valid JSON") from None
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        raise EnvelopeError("malformed-envelope", f"{name} must be a JSON object of strings")
    return parsed


def canonical_context(context: Mapping[str, str]) -> str:
    """The JSON text stored in x-amz-matdesc / x-amz-t: compact, keys in the context's order
    (PHP V3 compares contexts order-sensitively), non-ASCII as \\u escapes: Java S3EC runs its
    double-encoding repair over instruction-file values too, which would garble raw UTF-8."""
    return json.dumps(dict(context), separators=(",", ":"))


##= docs/spec/s3-encryption/data-format/content-metadata.md#algorithm-suite-and-message-format-version-compatibility
##= type=implication
##% Objects encrypted with ALG_AES_256_CBC_IV16_NO_KDF MAY use either the V1 or V2 message format version.
##% Objects encrypted with ALG_AES_256_GCM_IV12_TAG16_NO_KDF MUST use the V2 message format version only.
def _normalize_cek(raw: str | None) -> str:
    if raw is None:
        return CBC  # V1 has no x-amz-cek-alg, and only CBC may be V1 (above).
    try:
        return _CEK_ALIASES[raw]
    except KeyError:
        raise EnvelopeError("unknown-content-algorithm", f"unknown content algorithm {raw!r}") from None


# x-amz-wrap-alg values; LEGACY is the value's absence, never a value
_WRAPS_BY_NAME = {alg.value: alg for alg in WrapAlgorithm if alg is not WrapAlgorithm.LEGACY}


def _normalize_wrap(raw: str | None, fmt: str) -> WrapAlgorithm:
    if raw is None:
        if fmt == "v1" or fmt == "v2":
            return WrapAlgorithm.LEGACY
    elif isinstance(raw, str) and raw in _WRAPS_BY_NAME:
        return _WRAPS_BY_NAME[raw]
    raise EnvelopeError("unknown-wrap-algorithm", f"unknown key wrap algorithm {raw!r}")


def _parse_length(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise EnvelopeError("malformed-envelope", f"{UNENCRYPTED_LENGTH} is not a decimal length")


def check_bound_cek_alg(wrap: WrapAlgorithm, context: Mapping[str, str], stored_cek: str | None) -> None:
    """A kms+context envelope's content cipher is authenticated only by the KMS encryption
    context, which binds it as aws:x-amz-cek-alg: the two must be equal, exactly as stored (V3:
    x-amz-c "115"). Go v1 s3crypto and Go S3EC (kmsMismatchCEKAlg), Ruby V1/V2
    (CEKAlgMismatchError), Java v1's V2 client (validateKMSParameters) and PHP refuse an object
    where they differ or the key is missing, most of them before calling KMS: an envelope whose
    x-amz-cek-alg was relabelled (GCM to CBC, say) is refused here too, before any KMS call, so a
    new envelope never authenticates a label the old one did not. The legacy kms wrap binds no
    cipher (nothing to check)."""
    if wrap is not WrapAlgorithm.KMS_CONTEXT:
        return
    bound = context.get(KMS_CEK_ALG)
    if bound is None:
        raise EnvelopeError("cek-alg-mismatch", f"the kms+context encryption context has no {KMS_CEK_ALG}: the content cipher is not authenticated")
    if bound != stored_cek:
        raise EnvelopeError(
            "cek-alg-mismatch",
            f"the content cipher bound in the KMS encryption context ({bound}) is not the envelope's ({stored_cek}): "
            "the object may be altered or corrupted",
        )


def _check_iv(iv: bytes, cek_alg: str) -> None:
    expected = 12 if cek_alg == GCM else 16
    if len(iv) != expected:
        raise EnvelopeError("malformed-envelope", f"{IV} is {len(iv)} bytes; {cek_alg} needs {expected}")


# ---------------------------------------------------------------------------------------------
# Detection over object metadata


class MetadataKind(str, Enum):
    ENVELOPE = "envelope"  # a complete V1/V2/V3 envelope is in the object metadata
    V3_INSTRUCTION = "v3-instruction"  # x-amz-c/d/i present, x-amz-3 in the instruction file
    NONE = "none"  # nothing in metadata: readers MUST look for the instruction file


def lower_keys(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in metadata.items()}


##= docs/spec/s3-encryption/data-format/content-metadata.md#determining-s3ec-object-status
##% - If the metadata contains "x-amz-iv" and "x-amz-key" but no other version exclusive keys then the object MUST be considered as an S3EC-encrypted object using the V1 format.
##= docs/spec/s3-encryption/data-format/content-metadata.md#determining-s3ec-object-status
##% - If the metadata contains "x-amz-iv" and "x-amz-key-v2" but no other version exclusive keys then the object MUST be considered as an S3EC-encrypted object using the V2 format.
##= docs/spec/s3-encryption/data-format/content-metadata.md#determining-s3ec-object-status
##% - If the metadata contains "x-amz-3" and "x-amz-d" and "x-amz-i" but no other version exclusive keys then the object MUST be considered an S3EC-encrypted object using the V3 format.
##= docs/spec/s3-encryption/data-format/content-metadata.md#determining-s3ec-object-status
##% If there are multiple mapkeys which are meant to be exclusive to different versions, such as "x-amz-key", "x-amz-key-v2", and "x-amz-3" then the S3EC SHOULD throw an exception.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - If mapkeys exclusive to other (non-V1) format versions is present,the S3EC SHOULD throw an exception.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - If a mapkey exclusive to other (non-V2) format versions is present, the S3EC SHOULD throw an exception.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - If a mapkey exclusive to other (non-V3) format versions is present, the S3EC SHOULD throw an exception.
def detect(metadata: Mapping[str, str]) -> MetadataKind:
    """Where the envelope of an object with this user metadata lives: ENVELOPE (a V1, V2 or V3
    envelope), V3_INSTRUCTION (x-amz-c/d/i without x-amz-3: the rest is in the instruction
    file) or NONE (readers then look for the instruction file). Conflicting keys raise.
    """
    md = lower_keys(metadata)
    present = [k for k in EXCLUSIVE_KEYS if k in md]
    if len(present) > 1:
        raise EnvelopeError("conflicting-envelope", f"object metadata has several exclusive envelope keys: {', '.join(present)}")
    if present == [ENCRYPTED_DATA_KEY_V3]:
        missing = [k for k in (KEY_COMMITMENT_V3, MESSAGE_ID_V3, CONTENT_CIPHER_V3) if k not in md]
        if missing:
            raise EnvelopeError("malformed-envelope", f"V3 metadata lacks {', '.join(missing)}")
        return MetadataKind.ENVELOPE
    if present:
        if IV not in md:
            raise EnvelopeError("malformed-envelope", f"object metadata has {present[0]} but no {IV}")
        if any(k in md for k in V3_OBJECT_ONLY_KEYS):
            raise EnvelopeError("conflicting-envelope", f"object metadata mixes {present[0]} with V3 keys")
        return MetadataKind.ENVELOPE
    if any(k in md for k in V3_OBJECT_ONLY_KEYS):
        missing = [k for k in V3_OBJECT_ONLY_KEYS if k not in md]
        if missing:
            raise EnvelopeError("malformed-envelope", f"V3 metadata lacks {', '.join(missing)}")
        if any(k in md for k in V1_V2_KEYS):
            raise EnvelopeError("conflicting-envelope", "object metadata mixes V3 keys with V1/V2 keys")
        return MetadataKind.V3_INSTRUCTION
    return MetadataKind.NONE


def has_envelope_keys(metadata: Mapping[str, str]) -> bool:
    md = lower_keys(metadata)
    return any(k in md for k in ALL_ENVELOPE_KEYS)


# ---------------------------------------------------------------------------------------------
# Parsing


def _from_v1_v2(values: Mapping[str, Any], location: Location, unencrypted_length: Any) -> Envelope:
    fmt = "v1" if KEY_V1 in values else "v2"
    edk = b64decode(values[KEY_V1 if fmt == "v1" else KEY_V2], KEY_V1 if fmt == "v1" else KEY_V2)
    raw_cek = values.get(CEK_ALG)
    raw_wrap = values.get(WRAP_ALG)
    for name, value in ((CEK_ALG, raw_cek), (WRAP_ALG, raw_wrap), (MATDESC, values.get(MATDESC))):
        if value is not None and not isinstance(value, str):
            raise EnvelopeError("malformed-envelope", f"{name} is not a string")
    if fmt == "v1" and raw_wrap is not None:
        raise EnvelopeError("conflicting-envelope", f"V1 envelope ({KEY_V1}) carries {WRAP_ALG}")
    cek = _normalize_cek(raw_cek)
    wrap = _normalize_wrap(raw_wrap, fmt)
    iv = b64decode(values.get(IV), IV) if values.get(IV) is not None else None
    if iv is None:
        raise EnvelopeError("malformed-envelope", f"envelope has no {IV}")
    _check_iv(iv, cek)
    tag_len = values.get(TAG_LEN)
    if cek == GCM and tag_len not in (None, "128", 128):
        raise EnvelopeError("malformed-envelope", f"{TAG_LEN} {tag_len!r} is not 128")
    context = parse_context(values.get(MATDESC), MATDESC, location is Location.METADATA)
    check_bound_cek_alg(wrap, context, raw_cek)
    return Envelope(
        format=fmt,
        encrypted_key=edk,
        wrap=wrap,
        cek_alg=cek,
        context=context,
        location=location,
        iv=iv,
        unencrypted_length=_parse_length(unencrypted_length),
        raw_cek_alg=raw_cek,
        raw_wrap_alg=raw_wrap,
    )


def _from_v3(instruction: Mapping[str, Any], object_md: Mapping[str, str], location: Location) -> Envelope:
    c = object_md.get(CONTENT_CIPHER_V3)
    if c != SUITE_115:
        raise EnvelopeError("unknown-content-algorithm", f"unknown V3 content cipher {c!r}")
    code = instruction.get(ENCRYPTED_DATA_KEY_ALGORITHM_V3)
    if code not in V3_WRAP_CODES:
        raise EnvelopeError("unknown-wrap-algorithm", f"unknown V3 wrap code {code!r}")
    wrap = V3_WRAP_CODES[code]
    ##= docs/spec/s3-encryption/data-format/content-metadata.md#v3-only
    ##% The Material Description MUST be used for wrapping algorithms `AES/GCM` (`02`) and `RSA-OAEP-SHA1` (`22`).
    ##= docs/spec/s3-encryption/data-format/content-metadata.md#v3-only
    ##% The Encryption Context value MUST be used for wrapping algorithm `kms+context` or `12`.
    ##= docs/spec/s3-encryption/data-format/content-metadata.md#v3-only
    ##% If the mapkey x-amz-m is not present, the default Material Description value MUST be set to an empty map (`{}`).
    ##= docs/spec/s3-encryption/data-format/content-metadata.md#v3-only
    ##% If the mapkey x-amz-t is not present, the default Material Description value MUST be set to an empty map (`{}`).
    ctx_key = ENCRYPTION_CONTEXT_V3 if wrap is WrapAlgorithm.KMS_CONTEXT else MAT_DESC_V3
    if not isinstance(instruction.get(ctx_key, ""), str):
        raise EnvelopeError("malformed-envelope", f"{ctx_key} is not a string")
    message_id = b64decode(object_md[MESSAGE_ID_V3], MESSAGE_ID_V3)
    commitment = b64decode(object_md[KEY_COMMITMENT_V3], KEY_COMMITMENT_V3)
    if len(message_id) != 28 or len(commitment) != 28:
        raise EnvelopeError("malformed-envelope", "V3 x-amz-i and x-amz-d must be 28 bytes each")
    context = parse_context(instruction.get(ctx_key), ctx_key, location is Location.METADATA)
    check_bound_cek_alg(wrap, context, c)
    return Envelope(
        format="v3",
        encrypted_key=b64decode(instruction.get(ENCRYPTED_DATA_KEY_V3), ENCRYPTED_DATA_KEY_V3),
        wrap=wrap,
        cek_alg=SUITE_115,
        context=context,
        location=location,
        message_id=message_id,
        commitment=commitment,
        raw_cek_alg=c,
        raw_wrap_alg=code,
    )


def from_metadata(metadata: Mapping[str, str]) -> Envelope:
    """The envelope held in object metadata (boto3 ``Metadata``); raises if there is none."""
    md = lower_keys(metadata)
    if detect(md) is not MetadataKind.ENVELOPE:
        raise EnvelopeError("not-encrypted", "object metadata holds no S3EC envelope")
    if ENCRYPTED_DATA_KEY_V3 in md:
        return _from_v3(md, md, Location.METADATA)
    return _from_v1_v2(md, Location.METADATA, md.get(UNENCRYPTED_LENGTH))


##= docs/spec/s3-encryption/data-format/metadata-strategy.md#instruction-file
##% The content metadata stored in the Instruction File MUST be serialized to a JSON string.
##% The serialized JSON string MUST be the only contents of the Instruction File.
def parse_instruction_json(body: bytes) -> dict[str, Any]:
    """Decode an instruction file body: one JSON object, no duplicate keys, bounded size."""
    if len(body) > MAX_INSTRUCTION_FILE_BYTES:
        raise EnvelopeError("malformed-instruction-file", f"instruction file is {len(body)} bytes (limit {MAX_INSTRUCTION_FILE_BYTES})")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for k, v in pairs:
            if k in seen:
                raise EnvelopeError("malformed-instruction-file", f"instruction file repeats key {k!r}")
            seen[k] = v
        return seen

    try:
        text = body.decode("utf-8")
        parsed = json.loads(text, object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise EnvelopeError("malformed-instruction-file", "instruction file is not UTF-8") from None
    except json.JSONDecodeError:
        raise EnvelopeError("malformed-instruction-file", "instruction file is not JSON") from None
    if not isinstance(parsed, dict):
        raise EnvelopeError("malformed-instruction-file", "instruction file is not a JSON object")
    return parsed


##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v3-instruction-files
##% - The V3 message format MUST NOT store the mapkey "x-amz-c" and its value in the Instruction File.
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v3-instruction-files
##% - The V3 message format MUST NOT store the mapkey "x-amz-d" and its value in the Instruction File.
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v3-instruction-files
##% - The V3 message format MUST NOT store the mapkey "x-amz-i" and its value in the Instruction File.
##= docs/spec/s3-encryption/materials/s3-keyring.md#ondecrypt
##= type=implication
##% If the input collection of EncryptedDataKey instances contains any number of EDKs other than 1, the S3 Keyring MUST throw an exception.
def _check_instruction_keys(values: Mapping[str, Any]) -> str:
    """Only S3EC keys, none that belongs in object metadata, string values, exactly one
    encrypted data key; returns the name of that key."""
    unknown = sorted(k for k in values if k not in ALL_ENVELOPE_KEYS and k not in TOLERATED_INSTRUCTION_KEYS)
    if unknown:
        raise EnvelopeError("malformed-instruction-file", f"instruction file has non-S3EC keys: {', '.join(unknown)}")
    misplaced = [k for k in V3_OBJECT_ONLY_KEYS if k in values]
    if misplaced:
        raise EnvelopeError("conflicting-envelope", f"instruction file holds V3 object-only keys: {', '.join(misplaced)}")
    for k, v in values.items():
        if k not in (TAG_LEN, UNENCRYPTED_LENGTH) and not isinstance(v, str):
            raise EnvelopeError("malformed-instruction-file", f"instruction file value of {k} is not a string")
    present = [k for k in EXCLUSIVE_KEYS if k in values]
    if not present:
        raise EnvelopeError("malformed-instruction-file", "instruction file holds no encrypted data key")
    if len(present) > 1:
        raise EnvelopeError("conflicting-envelope", f"instruction file has several exclusive envelope keys: {', '.join(present)}")
    return present[0]


##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v1-v2-instruction-files
##% In the V1/V2 message format, all of the content metadata MUST be stored in the Instruction File.
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v3-instruction-files
##% In the V3 message format, only the content metadata related to the encrypted data is stored in the Instruction File.
##% In the V3 message format, the content metadata related to the encrypted content is stored in the Object Metadata.
def from_instruction_file(body: bytes, object_metadata: Mapping[str, str]) -> Envelope:
    """The envelope in an instruction file, combined with the object's metadata for V3."""
    values = parse_instruction_json(body)
    data_key_name = _check_instruction_keys(values)
    md = lower_keys(object_metadata)
    if data_key_name == ENCRYPTED_DATA_KEY_V3:
        # An explicit instruction-file read (Ruby, Go S3LoadStrategy) takes x-amz-c/d/i from the
        # metadata even when the metadata still holds the old x-amz-3 as well.
        missing = [k for k in V3_OBJECT_ONLY_KEYS if k not in md]
        if missing:
            raise EnvelopeError("malformed-envelope", f"V3 instruction file but object metadata lacks {', '.join(missing)}")
        if any(k in values for k in V1_V2_KEYS):
            raise EnvelopeError("conflicting-envelope", "instruction file mixes V3 and V1/V2 keys")
        return _from_v3(values, md, Location.INSTRUCTION_FILE)
    if any(k in values for k in V3_INSTRUCTION_KEYS):
        raise EnvelopeError("conflicting-envelope", "instruction file mixes V1/V2 and V3 keys")
    length = values.get(UNENCRYPTED_LENGTH, md.get(UNENCRYPTED_LENGTH))
    return _from_v1_v2(values, Location.INSTRUCTION_FILE, length)


# ---------------------------------------------------------------------------------------------
# Serialization of the new KMS envelope


##= docs/spec/s3-encryption/materials/s3-kms-keyring.md#kms-context
##= type=implication
##% The stored encryption context with the two reserved keys removed MUST match the provided encryption context.
def caller_context(context: Mapping[str, str]) -> dict[str, str]:
    """The caller's pairs of an encryption context: all but the two reserved keys, in their
    stored order. A kms+context reader (Java S3EC, Python, Ruby V2; Go S3EC and PHP V3 when
    given one) compares exactly these with the context it passes, and key policies may condition
    on them (kms:EncryptionContext:tenant), so they all survive a re-wrap. Order is kept: PHP
    V3 compares with !==, which is order-sensitive."""
    return {k: v for k, v in context.items() if k not in RESERVED_CONTEXT_KEYS}


def kms_context_for(envelope: Envelope, caller: Mapping[str, str] | None = None) -> dict[str, str]:
    """The encryption context of the new ``kms+context`` wrap: the caller's pairs (``caller``;
    by default those of a KMS source envelope), then aws:x-amz-cek-alg holding the content
    cipher, "115" for V3, as every kms+context writer puts it (the Python S3EC's KMS keyring,
    Go, Java, Ruby). kms_cmk_id is never carried into a kms+context context: Ruby V2 compares
    the whole context, Java v1's V2 client compares it with its materials minus kms_cmk_id,
    both reject it.
    """
    pairs = caller_context(envelope.context) if caller is None and envelope.wrap.is_kms else caller_context(caller or {})
    return {**pairs, KMS_CEK_ALG: SUITE_115 if envelope.format == "v3" else envelope.cek_alg}


##= docs/spec/s3-encryption/materials/s3-kms-keyring.md#supported-wrapping-algorithm-modes
##= type=exception
##= reason=--wrap kms writes KmsV1 envelopes on request, for readers that know no kms+context (Java v1 before AuthenticatedEncryption); kms+context is the default
##% The KmsKeyring MUST NOT support encryption using KmsV1 mode.
def legacy_kms_context(target_key_id: str, caller: Mapping[str, str] | None = None) -> dict[str, str]:
    """The context of the legacy ``kms`` wrap: Java v1 KMSEncryptionMaterials' kms_cmk_id, then
    the caller's pairs (legacy readers send the stored context to KMS as it is)."""
    return {KMS_CMK_ID: target_key_id, **caller_context(caller or {})}


def reader_context(wrap: WrapAlgorithm, context: Mapping[str, str]) -> dict[str, str]:
    """The context a reader of an envelope with this wrap passes: the caller's pairs for
    kms+context; nothing for the legacy kms wrap (Python refuses one, the others send the stored
    context as it is) and for AES/RSA wraps (their materials description is no KMS context)."""
    return caller_context(context) if wrap is WrapAlgorithm.KMS_CONTEXT else {}


def check_caller_context(pairs: Mapping[str, str], where: str) -> dict[str, str]:
    """A target encryption context given by the operator (``--encryption-context``,
    ``spec.target.encryptionContext``): non-empty string keys, none reserved or starting with
    "aws:" (KMS reserves that prefix; the clients reserve aws:x-amz-cek-alg and kms_cmk_id)."""
    for key, value in pairs.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise ConfigurationError(f"{where}: encryption context keys and values must be strings, keys non-empty")
        if key in RESERVED_CONTEXT_KEYS or key.lower().startswith("aws:"):
            raise ConfigurationError(f"{where}: encryption context key {key!r} is reserved")
    return dict(pairs)


##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - The mapkey "x-amz-key-v2" MUST be present for V2 format objects.
##% - The mapkey "x-amz-matdesc" MUST be present for V2 format objects.
##% - The mapkey "x-amz-iv" MUST be present for V2 format objects.
##% - The mapkey "x-amz-wrap-alg" MUST be present for V2 format objects.
##% - The mapkey "x-amz-cek-alg" MUST be present for V2 format objects.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - If the object is encrypted using AES-GCM for content encryption, then the the mapkey "x-amz-tag-len" MUST be present.
##% - If the object is encrypted using AES-CBC for content encryption, then the the mapkey "x-amz-tag-len" MUST NOT be present.
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v3-instruction-files
##% - The V3 message format MUST store the mapkey "x-amz-3" and its value in the Instruction File.
##% - The V3 message format MUST store the mapkey "x-amz-w" and its value in the Instruction File.
##= docs/spec/s3-encryption/data-format/metadata-strategy.md#v3-instruction-files
##% - The V3 message format MUST store the mapkey "x-amz-t" and its value (when present in the content metadata) in the Instruction File.
def target_fields(source: Envelope, new_encrypted_key: bytes, wrap: WrapAlgorithm, context: Mapping[str, str]) -> dict[str, str]:
    """The complete new envelope as the instruction file holds it: only S3EC keys, strings.
    V1 sources become V2 (x-amz-key-v2, CBC); V3 puts only 3/w/t in the file: x-amz-c/d/i stay
    in the object metadata.
    """
    if wrap not in (WrapAlgorithm.KMS, WrapAlgorithm.KMS_CONTEXT):
        raise ValueError("the target wrap must be kms or kms+context")
    if source.format == "v3":
        if wrap is not WrapAlgorithm.KMS_CONTEXT:
            raise EnvelopeError("unsupported-target", "V3 objects can only be wrapped with kms+context (x-amz-w 12)")
        return {
            ENCRYPTED_DATA_KEY_V3: b64encode(new_encrypted_key),
            ENCRYPTED_DATA_KEY_ALGORITHM_V3: V3_WRAP_CODE_OF[WrapAlgorithm.KMS_CONTEXT],
            ENCRYPTION_CONTEXT_V3: canonical_context(context),
        }
    assert source.iv is not None
    fields = {
        KEY_V2: b64encode(new_encrypted_key),
        IV: b64encode(source.iv),
        MATDESC: canonical_context(context),
        WRAP_ALG: wrap.value,
        CEK_ALG: source.cek_alg,
    }
    if source.cek_alg == GCM:
        fields[TAG_LEN] = "128"
    return fields


# The envelope keys a new envelope replaces in object metadata: every V1/V2 key and the V3 keys
# of the encrypted data key. x-amz-c/d/i describe the content and stay.
REPLACEABLE_KEYS = V1_V2_KEYS + V3_INSTRUCTION_KEYS
# S3: "the user-defined metadata is limited to 2 KB in size. The size of user-defined metadata is
# measured by taking the sum of the number of bytes in the UTF-8 encoding of each key and value."
# Whether S3 counts the x-amz-meta- prefix is not documented, so it is counted here.
USER_METADATA_LIMIT = 2048
USER_METADATA_PREFIX = "x-amz-meta-"


def user_metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes of user metadata as S3 limits them, counting the x-amz-meta- prefix of each key."""
    return sum(len((USER_METADATA_PREFIX + k).encode()) + len(v.encode()) for k, v in metadata.items())


##= docs/spec/s3-encryption/data-format/metadata-strategy.md#object-metadata
##% By default, the S3EC MUST store content metadata in the S3 Object Metadata.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - The mapkey "x-amz-c" MUST be present for V3 format objects.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - The mapkey "x-amz-3" MUST be present for V3 format objects.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - The mapkey "x-amz-t" SHOULD be present for V3 format objects that use KMS Encryption Context.
##% - In practice, this mapkey will always be present due to the default KMS Encryption Context used in kms+context mode.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - The mapkey "x-amz-w" MUST be present for V3 format objects.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - The mapkey "x-amz-d" MUST be present for V3 format objects.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - The mapkey "x-amz-i" MUST be present for V3 format objects.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - If a mapkey exclusive to other (non-V3) format versions is present, the S3EC SHOULD throw an exception.
##= docs/spec/s3-encryption/data-format/content-metadata.md#content-metadata-mapkeys
##% - If a mapkey exclusive to other (non-V2) format versions is present, the S3EC SHOULD throw an exception.
def metadata_with_envelope(object_metadata: Mapping[str, str], fields: Mapping[str, str]) -> dict[str, str]:
    """The object's user metadata with ``fields`` (``target_fields``) as its envelope: every old
    envelope key replaced; for V3, x-amz-c/d/i kept and x-amz-3/w/t beside them. Any other user
    metadata stays as it is, except x-amz-unencrypted-content-length on V3 objects (the .NET
    S3EC refuses a V3 envelope in metadata next to any V1/V2 key, that one included)."""
    v3 = ENCRYPTED_DATA_KEY_V3 in fields
    kept = {
        k: v
        for k, v in lower_keys(object_metadata).items()
        if k not in REPLACEABLE_KEYS and not (v3 and k == UNENCRYPTED_LENGTH)
    }
    if v3 and any(k not in kept for k in V3_OBJECT_ONLY_KEYS):
        raise EnvelopeError("malformed-envelope", "a V3 envelope in metadata needs x-amz-c, x-amz-d and x-amz-i")
    return {**kept, **fields}


def instruction_body(fields: Mapping[str, str]) -> bytes:
    """Serialize an instruction file: one JSON object, every value a string, ASCII only."""
    for k, v in fields.items():
        if k not in ALL_ENVELOPE_KEYS or k in V3_OBJECT_ONLY_KEYS or not isinstance(v, str):
            raise ValueError(f"refusing to write {k!r} into an instruction file")
    return json.dumps(dict(fields), separators=(",", ":"), sort_keys=True).encode("ascii")
