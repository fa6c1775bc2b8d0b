"""SigV4 signing with the signed headers gathered in one pass.

botocore's ``SigV4Auth`` collects the headers to sign into an ``HTTPHeaders`` (an
``email.message.Message``), whose every lookup scans and lower-cases all of the request's headers:
building the canonical headers is quadratic in their number, and it runs twice per request (for
the signature, then for the ``SignedHeaders`` list). Signing made about a sixth of the worker's
calls per object, and this collection about 3% of them (docs/performance.md). The classes here
replace only that collection with a dict of lower-cased names; everything else, and so every
signature, is botocore's own (tests/unit/test_signing.py signs generated requests both ways and
compares).
"""
from __future__ import annotations

from typing import Iterator

from botocore.auth import SIGNED_HEADERS_BLACKLIST, S3SigV4Auth, SigV4Auth, _host_from_url


class HeadersToSign:
    """What ``SigV4Auth.canonical_headers`` and ``signed_headers`` read of the headers to sign
    (iteration over the names, membership, ``get_all``), keyed by lower-cased name: the values
    of a repeated header stay in request order, as ``HTTPHeaders.get_all`` gives them."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, list]) -> None:
        self._values = values

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def get_all(self, name: str, failobj=None):
        return self._values.get(name.lower(), failobj)


class _OnePassHeaders:
    def headers_to_sign(self, request) -> HeadersToSign:
        # botocore's SigV4Auth.headers_to_sign, collecting into HeadersToSign.
        values: dict[str, list] = {}
        for name, value in request.headers.items():
            lname = name.lower()
            if lname not in SIGNED_HEADERS_BLACKLIST:
                values.setdefault(lname, []).append(value)
        if "host" not in values:
            values["host"] = [_host_from_url(request.url)]
        return HeadersToSign(values)


class OnePassSigV4Auth(_OnePassHeaders, SigV4Auth):
    """``SigV4Auth`` (KMS) with the headers to sign gathered in one pass."""


class OnePassS3SigV4Auth(_OnePassHeaders, S3SigV4Auth):
    """``S3SigV4Auth`` with the headers to sign gathered in one pass."""


ONE_PASS = {SigV4Auth: OnePassSigV4Auth, S3SigV4Auth: OnePassS3SigV4Auth}


def sign_in_one_pass(client) -> None:
    """Make ``client`` sign with the one-pass classes wherever botocore picks plain SigV4 or
    S3 SigV4 (not presigning, S3 Express, SigV4a, or the CRT's signers, which stay botocore's).
    Changes nothing when this botocore has no request signer to hook (the client then signs as
    botocore does; tests/unit/test_signing.py notices)."""
    signer = getattr(client, "_request_signer", None)
    original = getattr(signer, "get_auth_instance", None)
    if original is None:
        return

    def get_auth_instance(*args, **kwargs):
        auth = original(*args, **kwargs)
        one_pass = ONE_PASS.get(type(auth))
        if one_pass is not None:
            auth.__class__ = one_pass
        return auth

    signer.get_auth_instance = get_auth_instance
