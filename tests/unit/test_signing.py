"""The one-pass signers give botocore's own signature, request for request.

AWS refuses a request whose signature differs by one byte, and moto does not check signatures:
so every request here is signed twice, by botocore's class and by its one-pass counterpart, at
the same instant, and the two must agree on every header they write.
"""
import copy
import datetime
import random

import boto3
import botocore.auth
import pytest
from botocore.auth import SIGNED_HEADERS_BLACKLIST, S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from keymigration.aws.clients import ClientOptions, make_clients
from keymigration.aws.signing import HeadersToSign, OnePassS3SigV4Auth, OnePassSigV4Auth

NOW = datetime.datetime(2026, 11, 30, 23, 59, 58)
NAMES = [
    "Content-Type", "content-type", "X-Amz-Meta-A", "x-amz-meta-a", "X-AMZ-META-B", "If-None-Match", "If-Match",
    "x-amz-checksum-crc32", "Content-MD5", "X-Amz-Target", "Range", "x-amz-copy-source", "Host", "host",
    "X-Amz-Content-SHA256", "X-Amz-Date", "Date", "X-Amz-Security-Token", "Authorization",
    *SIGNED_HEADERS_BLACKLIST, "User-Agent", "X-Amzn-Trace-Id", "Expect",
]
VALUES = ["", "*", "a", "  padded  ", "in  between\tspaces", "application/json", '"etag-1"', "k05Ykw==", "a,b", "é"]
URLS = [
    "http://127.0.0.1:5000/bucket/key", "https://bucket.s3.us-east-1.amazonaws.com/a%20b/c+d?list-type=2&prefix=x%2F",
    "https://kms.eu-west-1.amazonaws.com/", "http://[::1]:9000/b/k?x-id=PutObject", "https://s3.amazonaws.com:443/b/k",
    "http://localhost:80/b/%E2%82%AC/..//./k?versionId=3&a=&b",
]


def _request(rng: random.Random) -> AWSRequest:
    body = rng.choice([b"", b"{}", b"x" * rng.randint(1, 300)])
    request = AWSRequest(method=rng.choice(["GET", "HEAD", "PUT", "POST", "DELETE"]), url=rng.choice(URLS), data=body)
    for _ in range(rng.randint(0, 16)):
        request.headers[rng.choice(NAMES)] = rng.choice(VALUES)  # HTTPHeaders: a repeated name adds a value
    if rng.random() < 0.3:
        request.params = {rng.choice(["b", "a", "list-type"]): rng.choice(["1", "x y", "é"]) for _ in range(3)}
    request.context.update(rng.choice([{}, {"payload_signing_enabled": False}, {"checksum": {"request_algorithm": {"in": "header", "name": "x-amz-checksum-crc32"}}}]))
    return request


def _sign(cls, request: AWSRequest, credentials: Credentials, service: str, monkeypatch) -> list[tuple[str, str]]:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)
    signed = copy.deepcopy(request)
    cls(credentials, service, "eu-west-1").add_auth(signed)
    return list(signed.headers.items())


@pytest.mark.parametrize("seed", range(200))
def test_generated_requests_sign_exactly_as_botocore_signs_them(seed, monkeypatch):
    rng = random.Random(seed)
    request = _request(rng)
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", rng.choice([None, "token/=="]))
    for botocore_class, one_pass in ((SigV4Auth, OnePassSigV4Auth), (S3SigV4Auth, OnePassS3SigV4Auth)):
        expected = _sign(botocore_class, request, credentials, "s3", monkeypatch)
        assert _sign(one_pass, request, credentials, "s3", monkeypatch) == expected
        assert any(name == "Authorization" for name, _ in expected)


def test_repeated_headers_keep_their_order_and_case_folds():
    request = AWSRequest(method="GET", url="https://h/")
    request.headers["x-a"] = "2"
    request.headers["X-A"] = "1"  # HTTPHeaders keeps both, in order
    headers = OnePassSigV4Auth(Credentials("AKID", "secret"), "kms", "eu-west-1").headers_to_sign(request)
    assert isinstance(headers, HeadersToSign)
    assert list(headers) == ["x-a", "host"] and len(headers) == 2
    assert headers.get_all("X-a") == ["2", "1"] and headers.get_all("nope") is None
    assert "HOST" in headers and "other" not in headers and 3 not in headers


def test_the_worker_clients_sign_in_one_pass_and_no_other_client_does(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    s3, kms = make_clients(ClientOptions(region="eu-west-1"))
    signer_of = lambda client, version, name: type(  # noqa: E731
        client._request_signer.get_auth_instance(signing_name=name, region_name="eu-west-1", signature_version=version)
    )
    assert signer_of(s3, "s3v4", "s3") is OnePassS3SigV4Auth
    assert signer_of(kms, "v4", "kms") is OnePassSigV4Auth
    assert signer_of(s3, "s3v4-query", "s3") is S3SigV4QueryAuth  # presigning stays botocore's
    plain = boto3.session.Session(region_name="eu-west-1").client("s3")
    assert signer_of(plain, "s3v4", "s3") is S3SigV4Auth
