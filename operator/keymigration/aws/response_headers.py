"""Response headers read without the email parser, on the worker's connections only.

``http.client`` hands every response's header block to ``email``'s ``FeedParser``, a general
MIME parser, to build the ``HTTPMessage`` urllib3 and botocore read the headers from. That was
about 8% of the worker's client CPU per object (py-spy, c = 8), more than botocore's own parsing
of the answers. The header blocks S3 and KMS send are plain ``Name: value`` lines, and for those
the email parser's result is exactly the list of (name, value) pairs: ``plain_message`` builds
that same ``HTTPMessage`` directly. Any block the email parser treats in a way of its own goes to
it as before: a folded or continued line, a line without a colon or with a bare CR, a name
outside the printable ASCII the parser accepts, a ``From `` line, a multipart or message content
type (which makes it look for parts), a block cut short without its blank line.

``fast_response_headers(client)`` gives one botocore client's connection pools a response class
whose ``begin`` is ``http.client``'s own code (the running Python's, not a copy) with only its
``parse_headers`` replaced. Every other client in the process keeps ``http.client``'s parser (the
benchmarks' floor among them). Without the private botocore attributes it relies on, nothing
changes.
"""
from __future__ import annotations

import email.parser
import http.client
import re
import types
from typing import Any

from botocore.awsrequest import AWSHTTPConnection, AWSHTTPConnectionPool, AWSHTTPSConnection, AWSHTTPSConnectionPool

# A block of lines each a field name FeedParser takes as one (its headerRE: printable ASCII but
# ':'), a colon and a value without CR or LF, ended by CRLF or LF; and each line's name and value
# (compat32's header_source_parse: the value without its leading blanks and its line end).
_PLAIN_BLOCK = re.compile(r"(?:[\041-\071\073-\176]+:[^\r\n]*\r?\n)*")
_FIELD = re.compile(r"([\041-\071\073-\176]+):[ \t]*([^\r\n]*)\r?\n")
# Content types after which FeedParser looks for parts or an enclosed message.
_NESTED = re.compile(r"(?im)^content-type:[ \t]*(multipart|message)/")


def plain_message(lines: list[bytes]) -> http.client.HTTPMessage | None:
    """The ``HTTPMessage`` of a header block of plain ``Name: value`` lines (as
    ``http.client._read_headers`` returns it, blank line last), or None for any other block."""
    if not lines or lines[-1] not in (b"\r\n", b"\n"):
        return None  # cut short: the email parser decides
    text = b"".join(lines[:-1]).decode("iso-8859-1")
    lowered = text.lower()  # a cheap look for the two content types first: they are rare
    if not _PLAIN_BLOCK.fullmatch(text) or (("multipart/" in lowered or "message/" in lowered) and _NESTED.search(text)):
        return None
    message = http.client.HTTPMessage()
    message._headers = _FIELD.findall(text)  # what Message.set_raw appends, one pair per line
    message.set_payload("")  # the empty body after the blank line
    return message


def parse_headers(fp: Any, _class: type = http.client.HTTPMessage) -> http.client.HTTPMessage:
    """``http.client.parse_headers``, plain blocks built directly."""
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]
    if _class is http.client.HTTPMessage:
        message = plain_message(lines)
        if message is not None:
            return message
    return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))


class PlainHeadersResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` whose ``begin`` runs the standard library's own code, with
    ``parse_headers`` above in place of the module's."""

    begin = types.FunctionType(  # type: ignore[assignment]
        http.client.HTTPResponse.begin.__code__, {**vars(http.client), "parse_headers": parse_headers}, "begin",
        http.client.HTTPResponse.begin.__defaults__, http.client.HTTPResponse.begin.__closure__,
    )


class _Connection(AWSHTTPConnection):
    response_class = PlainHeadersResponse


class _SecureConnection(AWSHTTPSConnection):
    response_class = PlainHeadersResponse


class _Pool(AWSHTTPConnectionPool):
    ConnectionCls = _Connection


class _SecurePool(AWSHTTPSConnectionPool):
    ConnectionCls = _SecureConnection


def fast_response_headers(client: Any) -> None:
    """Give ``client``'s future connections ``PlainHeadersResponse`` (before its first request)."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    manager = getattr(session, "_manager", None)
    classes = getattr(session, "_pool_classes_by_scheme", None)
    if manager is None or not isinstance(classes, dict) or classes.get("http") is not AWSHTTPConnectionPool:
        return
    ours = {"http": _Pool, "https": _SecurePool}
    classes.update(ours)  # proxy managers, made later, take these
    manager.pool_classes_by_scheme = classes
