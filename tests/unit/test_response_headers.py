"""aws/response_headers.py: the worker's connections read response headers without the email
parser, and get exactly what http.client's parser gives, for any header block (generated
blocks of every shape the email parser treats in its own way, and whole responses)."""
import http.client
import io
import random

import boto3
import pytest

from keymigration.aws.clients import ClientOptions, make_clients
from keymigration.aws.response_headers import PlainHeadersResponse, _Pool, _SecurePool, parse_headers, plain_message

NAMES = ["x-amz-id-2", "x-amz-request-id", "Date", "ETag", "Content-Length", "Content-Type", "x-amz-meta-x-amz-key-v2",
         "Connection", "Transfer-Encoding", "x-amz-meta-ünïcode", "From", "Subject", "X_Under", "a", "!#$%&'*+.^`|~",
         "content-TYPE", "Set-Cookie"]
VALUES = ["", "abc", "  leading blanks", "\ttab first", "trailing blanks  ", "Tue, 01 Dec 2026 03:00:00 GMT", '"d41d8cd9"',
          "multipart/form-data; boundary=xyz", "message/rfc822", "MULTIPART/Mixed; boundary=q", "Message/Partial", "binary/octet-stream", "text/plain; charset=utf-8", "1234",
          "chunked", "close", "keep-alive", "colon: inside: value", "nul\x00byte", "vt\x0bff\x0cfs\x1c", "nel\x85", "latin-1 é ÿ",
          "=?utf-8?q?encoded?=", "{\"aws:x-amz-cek-alg\":\"AES/GCM/NoPadding\"}"]
ODD_LINES = [b" continued line", b"\tcontinued with a tab", b"no colon here", b": empty name", b"From someone@example.com",
             b"From: someone", b"bad name: value", b"name\x80: value", b"bare\rcr: value", b"Name :space before colon",
             b"x-amz-meta-a:\r"]


def block(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randrange(0, 18)):
        if rng.random() < 0.08:
            lines.append(rng.choice(ODD_LINES))
        else:
            name = rng.choice(NAMES).encode("utf-8" if rng.random() < 0.1 else "latin-1", "replace")
            value = rng.choice(VALUES).encode("latin-1", "replace")
            if rng.random() < 0.05:
                value = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
            lines.append(name + b":" + (b" " if rng.random() < 0.8 else b"") + value)
    end = b"\n" if rng.random() < 0.15 else b"\r\n"
    text = b"".join(line + (end if rng.random() < 0.95 else b"\r\n") for line in lines)
    return text + (b"" if rng.random() < 0.05 else end) + b"BODY BYTES"


def comparable(message: http.client.HTTPMessage) -> dict:
    found = dict(vars(message))
    found["defects"] = [type(d).__name__ for d in found["defects"]]
    found["_payload"] = "parts" if isinstance(message.get_payload(), list) else message.get_payload()
    return found


@pytest.mark.parametrize("seed", range(400))
def test_any_header_block_parses_exactly_as_http_client_parses_it(seed):
    raw = block(random.Random(seed))
    expected, got = io.BytesIO(raw), io.BytesIO(raw)
    stdlib, ours = http.client.parse_headers(expected), parse_headers(got)
    assert type(ours) is type(stdlib) and comparable(ours) == comparable(stdlib)
    assert ours.items() == stdlib.items()
    assert got.tell() == expected.tell()  # the body starts where it did


def test_plain_blocks_take_the_fast_path_and_others_the_email_parser():
    def lines(raw: bytes) -> list[bytes]:
        return http.client._read_headers(io.BytesIO(raw))

    plain = plain_message(lines(b"ETag: \"x\"\r\nContent-Length: 3\r\nx-amz-meta-a:b\r\n\r\n"))
    assert plain is not None and plain.items() == [("ETag", '"x"'), ("Content-Length", "3"), ("x-amz-meta-a", "b")]
    for odd in (b"A: b\r\n c\r\n\r\n", b"A b\r\n\r\n", b"Content-Type: multipart/mixed; boundary=x\r\n\r\n",
                b"content-type:\tMESSAGE/rfc822\r\n\r\n", b"From x\r\n\r\n", b"A: b\rc\r\n\r\n", b"A: b\r\n"):
        assert plain_message(lines(odd)) is None, odd


def serve(raw: bytes, response_class: type, method: str = "GET") -> dict:
    class Socket:
        def makefile(self, mode):
            return io.BytesIO(raw)

    response = response_class(Socket(), method=method)
    response.begin()
    return {"status": response.status, "reason": response.reason, "version": response.version, "chunked": response.chunked,
            "length": response.length, "will_close": response.will_close, "headers": response.getheaders(),
            "body": response.read()}


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"e\"\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nX-Skip: 1\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nbody",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: -4\r\n folded: yes\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nuntil the connection closes",
]


@pytest.mark.parametrize("raw", RESPONSES)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_whole_responses_read_as_http_client_reads_them(raw, method):
    assert serve(raw, PlainHeadersResponse, method) == serve(raw, http.client.HTTPResponse, method)


def test_the_worker_clients_read_headers_this_way_and_no_other_client_does(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    for client in make_clients(ClientOptions(region="eu-west-1")):
        session = client._endpoint.http_session
        assert session._manager.pool_classes_by_scheme == {"http": _Pool, "https": _SecurePool}
        assert _Pool.ConnectionCls.response_class is PlainHeadersResponse
    plain = boto3.session.Session(region_name="eu-west-1").client("s3")
    assert plain._endpoint.http_session._manager.pool_classes_by_scheme["http"].ConnectionCls.response_class is http.client.HTTPResponse
