"""Wrapping data keys under the target KMS key (and KMS-to-KMS re-wrapping). Thin over boto3.

Every call passes through the shared token bucket. Error messages carry KMS error codes and key
ids, never key bytes (KMS error messages do not echo plaintext).
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

from botocore.exceptions import BotoCoreError, ClientError

from keymigration.aws.ratelimit import TokenBucket
from keymigration.errors import ConfigurationError, KmsError
from keymigration.formats.envelope import (
    Envelope,
    WrapAlgorithm,
    caller_context,
    check_caller_context,
    kms_context_for,
    legacy_kms_context,
)
from keymigration.formats.secrets import DataKey

# KMS errors that mean "this object, with these keys, will not work": not worth retrying.
PERMANENT_KMS_ERRORS = {
    "AccessDeniedException",
    "IncorrectKeyException",
    "InvalidCiphertextException",
    "DisabledException",
    "KMSInvalidStateException",
    "NotFoundException",
    "InvalidKeyUsageException",
    "ValidationException",
    "InvalidGrantTokenException",
}



def _error(error: ClientError | BotoCoreError, action: str, key_id: str | None) -> KmsError:
    """A KmsError for any botocore error, so the engine above never sees botocore's types: a
    service error keeps its code; a connection error or timeout is ``kms-connection``."""
    where = f" with key {key_id}" if key_id else ""
    if isinstance(error, BotoCoreError):
        return KmsError("kms-connection", f"KMS {action}{where} failed: {type(error).__name__}", retryable=True)
    code = error.response.get("Error", {}).get("Code", "Unknown")
    return KmsError(f"kms-{code}", f"KMS {action}{where} failed: {code}", retryable=code not in PERMANENT_KMS_ERRORS)


MAX_GRANT_TOKENS = 10  # the KMS API's limit per request, each 1-8192 characters


def check_grant_tokens(tokens: Sequence[str]) -> tuple[str, ...]:
    tokens = tuple(tokens)
    if len(tokens) > MAX_GRANT_TOKENS:
        raise ConfigurationError(f"at most {MAX_GRANT_TOKENS} KMS grant tokens, not {len(tokens)}")
    if not all(isinstance(t, str) and 1 <= len(t) <= 8192 for t in tokens):
        raise ConfigurationError("a KMS grant token is 1 to 8192 characters")
    return tokens


@dataclass(frozen=True)
class Wrapped:
    encrypted_key: bytes
    context: dict[str, str]
    key_arn: str


class KmsKeys:
    """The target key and the configured old KMS keys, over one shared KMS client."""

    def __init__(
        self,
        client,
        target_key_id: str,
        wrap: WrapAlgorithm = WrapAlgorithm.KMS_CONTEXT,
        source_key_ids: Sequence[str] = (),
        limiter: TokenBucket | None = None,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] = (),
    ):
        if not wrap.is_kms:
            raise ValueError("target wrap must be kms or kms+context")
        self.client = client
        self.target_key_id = target_key_id
        self.wrap = wrap
        self.source_key_ids = list(source_key_ids)
        # The caller's pairs of the new context for AES/RSA sources (KMS sources keep their own).
        self.encryption_context = check_caller_context(encryption_context or {}, "target encryption context")
        # Sent with every request (Encrypt, Decrypt, ReEncrypt, DescribeKey): permissions from a
        # grant not yet visible everywhere (eventual consistency). Not secret (AWS KMS docs).
        self.grant_tokens = check_grant_tokens(grant_tokens)
        self.limiter = limiter or TokenBucket(None)
        self.target_arn = target_key_id  # replaced by describe_target()
        self.pinned = False  # describe_target() resolved the target: requests name its ARN
        self.calls: Counter[str] = Counter()  # KMS requests by action, for reports and tests
        self._calls_lock = threading.Lock()

    def _call(self, action: str, **kwargs):
        if self.grant_tokens:
            kwargs["GrantTokens"] = list(self.grant_tokens)
        self.limiter.acquire()
        with self._calls_lock:
            self.calls[action] += 1
        return getattr(self.client, action)(**kwargs)

    def describe_target(self) -> str:
        """Check the target key exists, is enabled and symmetric; remember its ARN."""
        try:
            meta = self._call("describe_key", KeyId=self.target_key_id)["KeyMetadata"]
        except ClientError as error:
            raise _error(error, "DescribeKey", self.target_key_id) from None
        except BotoCoreError as error:
            # No credentials yet, an unreachable endpoint (after botocore's retries): no
            # configuration problem, but a start-up the Job retries; botocore's message says which.
            raise KmsError(f"kms-{type(error).__name__}", f"KMS DescribeKey of {self.target_key_id} failed: {error}",
                           retryable=True) from None
        if meta.get("KeyState", "Enabled") != "Enabled":
            raise KmsError("kms-key-not-enabled", f"target KMS key {self.target_key_id} is {meta.get('KeyState')}")
        if meta.get("KeySpec", meta.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT")) != "SYMMETRIC_DEFAULT":
            raise KmsError("kms-key-not-symmetric", f"target KMS key {self.target_key_id} is not a symmetric encryption key")
        if meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
            raise KmsError("kms-key-usage", f"target KMS key {self.target_key_id} is not for ENCRYPT_DECRYPT")
        self.target_arn = meta["Arn"]
        self.pinned = True
        return self.target_arn

    def _key(self, key_id: str) -> str:
        """The KeyId a request names: the target's ARN (the alias was resolved once, at start:
        one repointed during the run cannot wrap objects under another key), else ``key_id``."""
        return self.target_arn if key_id in (self.target_key_id, self.target_arn) else key_id

    def _answered_by_target(self, response: dict, action: str, *fields: str) -> None:
        """KMS names the key it used in its answer (a key ARN): it must be the target."""
        if not self.pinned:
            return
        for name in fields:
            if response.get(name) != self.target_arn:
                raise KmsError(
                    "kms-key-mismatch", f"KMS {action} answered with {name} {response.get(name)}, not the target key {self.target_arn}"
                )

    def target_context(self, envelope: Envelope) -> dict[str, str]:
        """The new envelope's KMS context: a KMS source's caller pairs (every one survives, so
        readers that pass the context and key policies on kms:EncryptionContext:* keep working),
        or for an AES/RSA source the configured target context; plus the reserved key."""
        caller = caller_context(envelope.context) if envelope.wrap.is_kms else self.encryption_context
        if self.target_wrap(envelope) is WrapAlgorithm.KMS:
            return legacy_kms_context(self.target_key_id, caller)
        return kms_context_for(envelope, caller)

    def target_wrap(self, envelope: Envelope) -> WrapAlgorithm:
        return WrapAlgorithm.KMS_CONTEXT if envelope.format == "v3" else self.wrap

    ##= docs/spec/s3-encryption/materials/s3-kms-keyring.md#encryptdatakey
    ##= type=exception
    ##= reason=the configured identifier (often an alias) is resolved once with DescribeKey and every request names that key ARN, so an alias repointed during a run cannot wrap objects under another key
    ##% - `KeyId` MUST be the configured AWS KMS key identifier.
    ##= docs/spec/s3-encryption/materials/s3-kms-keyring.md#encryptdatakey
    ##% - `PlaintextDataKey` MUST be the plaintext data key in the [encryption materials](../structures.md#encryption-materials).
    ##% - `EncryptionContext` MUST be the [encryption context](../structures.md#encryption-context) included in the input [encryption materials](../structures.md#encryption-materials).
    ##= docs/spec/s3-encryption/materials/s3-kms-keyring.md#encryptdatakey
    ##% If the call to [AWS KMS Encrypt](https://docs.aws.amazon.com/kms/latest/APIReference/API_Encrypt.html) does not succeed, OnEncrypt MUST fail.
    def encrypt(self, data_key: DataKey, envelope: Envelope) -> Wrapped:
        context = self.target_context(envelope)
        try:
            response = self._call(
                "encrypt", KeyId=self.target_arn, Plaintext=data_key.reveal(), EncryptionContext=context
            )
        except (ClientError, BotoCoreError) as error:
            raise _error(error, "Encrypt", self.target_arn) from None
        self._answered_by_target(response, "Encrypt", "KeyId")
        return Wrapped(response["CiphertextBlob"], context, response.get("KeyId", self.target_arn))

    ##= docs/spec/s3-encryption/materials/s3-kms-keyring.md#kms-context
    ##% - `KeyId` MUST be the configured AWS KMS key identifier.
    ##% - `CiphertextBlob` MUST be the [encrypted data key ciphertext](../structures.md#ciphertext).
    ##% - `EncryptionContext` MUST be the [encryption context](../structures.md#encryption-context) included in the input [decryption materials](../structures.md#decryption-materials).
    def decrypt(self, encrypted_key: bytes, context: Mapping[str, str], key_id: str) -> DataKey:
        """Decrypt with ``key_id``; the target key by its ARN, and the answer must name it."""
        key_id = self._key(key_id)
        try:
            response = self._call(
                "decrypt", CiphertextBlob=encrypted_key, EncryptionContext=dict(context), KeyId=key_id
            )
        except (ClientError, BotoCoreError) as error:
            raise _error(error, "Decrypt", key_id) from None
        if key_id == self.target_arn:
            self._answered_by_target(response, "Decrypt", "KeyId")
        return DataKey(response["Plaintext"])

    def source_key_candidates(self, envelope: Envelope) -> list[str]:
        """Configured old KMS keys, the one named by a legacy kms_cmk_id first."""
        named = envelope.context.get("kms_cmk_id")
        ordered = [k for k in self.source_key_ids if k == named] + [k for k in self.source_key_ids if k != named]
        return ordered

    def reencrypt(self, envelope: Envelope) -> Wrapped:
        """KMS-to-KMS: ReEncrypt, so the plaintext data key never leaves KMS."""
        if not self.source_key_ids:
            raise KmsError(
                "no-source-key", "the data key is wrapped by KMS but no source KMS key is configured (--source-kms-key-id)"
            )
        context = self.target_context(envelope)
        last: KmsError | None = None
        for source in self.source_key_candidates(envelope):
            try:
                response = self._call(
                    "re_encrypt",
                    CiphertextBlob=envelope.encrypted_key,
                    SourceEncryptionContext=envelope.context,
                    SourceKeyId=source,
                    DestinationKeyId=self.target_arn,
                    DestinationEncryptionContext=context,
                )
            except (ClientError, BotoCoreError) as error:
                last = _error(error, "ReEncrypt", source)
                if last.reason == "kms-IncorrectKeyException":
                    continue
                raise last from None
            self._answered_by_target(response, "ReEncrypt", "KeyId")
            return Wrapped(response["CiphertextBlob"], context, response.get("KeyId", self.target_arn))
        assert last is not None
        raise KmsError("wrong-key", "the data key is not wrapped by any configured source KMS key")

    def check_decryptable(self, encrypted_key: bytes, context: Mapping[str, str]) -> None:
        """Prove a new envelope opens with the target key and its context, without plaintext
        leaving KMS: ReEncrypt it onto the target key itself and drop the result. The answer's
        SourceKeyId must be the target too (moto ignores the SourceKeyId of a request)."""
        try:
            response = self._call(
                "re_encrypt",
                CiphertextBlob=encrypted_key,
                SourceEncryptionContext=dict(context),
                SourceKeyId=self.target_arn,
                DestinationKeyId=self.target_arn,
                DestinationEncryptionContext=dict(context),
            )
        except (ClientError, BotoCoreError) as error:
            raise _error(error, "ReEncrypt (verification)", self.target_arn) from None
        self._answered_by_target(response, "ReEncrypt (verification)", "KeyId", "SourceKeyId")
