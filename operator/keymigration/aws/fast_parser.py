"""botocore's REST-XML parser (S3's) with fast paths for lists of flat structures and for
members read from headers. Results equal botocore's, dict for dict
(tests/unit/test_fast_parser.py compares them over generated pages and header sets).

Lists. A ListObjectsV2 page is a list of up to 1,000 ``Object`` structures. botocore parses each one
generically: it maps every child element's tag through a regular expression, walks all the
structure's members, and dispatches each value through three layers of handlers; that is about
30 us per key, four times the XML parse itself. The worker parses a key several times over (the
count, the listing, the re-listing that confirms the writes), so this was the largest share of
its client CPU above the floor's (docs/performance.md).

The fast path precomputes, once per structure shape, which element fills which member, and
converts the scalar types inline with the same rules as botocore's handlers (``_text_content``:
an empty element is ``''``; timestamps go to the client's timestamp parser; integers ``int``;
booleans ``== 'true'``). Anything else (a nested structure such as ``Owner``, a blob, a float)
goes through botocore's own ``_parse_shape``; a structure the fast path cannot express exactly
(XML attributes, members sharing an element name, tagged unions, errors) and any element whose
tag repeats for a scalar member use botocore's ``_handle_structure`` unchanged.

Headers. Every HEAD and PUT response is parsed by looking each header member of the output
shape up in a case-insensitive ``HeadersDict`` (see ``_parse_non_payload_attrs``): after the
list path, this was the largest share of the worker's client CPU that the stages do not need.
"""
from __future__ import annotations

import weakref
from typing import Any

from botocore.awsrequest import HeadersDict
from botocore.parsers import ResponseParserFactory, RestXMLParser

_SCALARS = {"string", "character", "timestamp", "integer", "long", "boolean"}
_LIST = "list"  # a flattened list of scalars (an Object's ChecksumAlgorithm)
_DELEGATE = "delegate"  # botocore's _parse_shape for the element

# One plan per structure shape: element name -> (member name, kind, member shape); None where
# the fast path does not apply. Weak: a plan goes with its client's service model.
_plans: weakref.WeakKeyDictionary[Any, dict | None] = weakref.WeakKeyDictionary()


def _plan(parser: RestXMLParser, shape) -> dict | None:
    try:
        return _plans[shape]
    except KeyError:
        pass
    plan: dict | None = {}
    if shape.metadata.get("exception") or getattr(shape, "is_tagged_union", False):
        plan = None
    else:
        for name, member in shape.members.items():
            serialization = member.serialization
            if serialization.get("location") in parser.KNOWN_LOCATIONS or serialization.get("eventheader"):
                continue
            if serialization.get("xmlAttribute"):
                plan = None
                break
            xml_name = parser._member_key_name(member, name)
            if xml_name in plan:
                plan = None
                break
            if member.type_name in _SCALARS:
                kind = member.type_name
            elif (
                member.type_name == "list"
                and serialization.get("flattened")
                and member.member.type_name in ("string", "character")
            ):
                kind = _LIST
            else:
                kind = _DELEGATE
            plan[xml_name] = (name, kind, member)
    _plans[shape] = plan
    return plan


# One plan per output shape for the members read from the HTTP response, in member order:
# (member name, location, lower-cased header name or prefix, member shape).
_header_plans: weakref.WeakKeyDictionary[Any, tuple] = weakref.WeakKeyDictionary()
_RESPONSE_LOCATIONS = ("statusCode", "headers", "header")


def _header_plan(shape) -> tuple:
    try:
        return _header_plans[shape]
    except KeyError:
        pass
    plan = []
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        if location in _RESPONSE_LOCATIONS:
            plan.append((name, location, member.serialization.get("name", "" if location == "headers" else name).lower(), member))
    _header_plans[shape] = plan = tuple(plan)
    return plan


class _ListedHeaders(HeadersDict):
    """A response's ``HeadersDict`` (the same storage) that answers lookups by the names as
    sent from a plain dict. ``HeadersDict`` allocates a key object and lower-cases the name
    for every lookup, and botocore's parser lists the headers twice per response (the header
    members, then ``ResponseMetadata``'s lower-cased copy, one lookup per header). A name in
    another case, and everything else, is ``HeadersDict``'s own; a write drops the copy."""

    def __init__(self, headers: HeadersDict) -> None:  # not super().__init__: that would copy
        self._dict = headers._dict
        self._as_sent: dict | None = None

    def _names(self) -> dict:
        if self._as_sent is None:
            # HeadersDict.__iter__ yields str(key), and at most one key per lower-cased name.
            self._as_sent = {str(key): value for key, value in self._dict.items()}
        return self._as_sent

    def __getitem__(self, key):
        names = self._names()
        if key in names:
            return names[key]
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self._as_sent = None
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._as_sent = None
        super().__delitem__(key)

    def items(self):
        return list(self._names().items())


class FastRestXMLParser(RestXMLParser):
    """``RestXMLParser`` whose lists of flat structures parse without the generic walk, and
    whose header members are looked up in one lower-cased copy of the headers.

    A new parser is made per response (botocore's factory does so), so nothing here is shared
    between threads but the per-shape plans, which are built whole before they are stored."""

    def parse(self, response, shape):
        headers = response["headers"]
        if type(headers) is not HeadersDict or not isinstance(getattr(headers, "_dict", None), dict):
            return super().parse(response, shape)
        response["headers"] = _ListedHeaders(headers)
        try:
            return super().parse(response, shape)
        finally:  # the response keeps its own headers object for whoever reads it next
            response["headers"] = headers

    def _parse_non_payload_attrs(self, response, shape, member_shapes, final_parsed):
        """botocore's loop, with the headers read once.

        botocore looks up every header member of the output shape in the case-insensitive
        ``HeadersDict``: 55 members for HeadObject, each lookup allocating a key object and
        lower-casing it, as much CPU per HEAD as the worker's own code per object. Here the
        headers are copied once into a dict keyed by their lower-cased names (``HeadersDict``'s
        own rule for equality) and each member costs a plain dict lookup. Values still go
        through botocore's ``_parse_shape``; headers that are not a ``HeadersDict``
        (case-sensitive lookups) take botocore's loop.
        """
        headers = response["headers"]
        if not isinstance(headers, HeadersDict) or member_shapes is not shape.members:
            return super()._parse_non_payload_attrs(response, shape, member_shapes, final_parsed)
        pairs = list(headers.items())
        lowered = {header.lower(): value for header, value in pairs}
        for name, location, key, member in _header_plan(shape):
            if location == "header":
                if key in lowered:
                    final_parsed[name] = self._parse_shape(member, lowered[key])
            elif location == "headers":
                # botocore's _parse_header_map: the prefix matched case-insensitively, the
                # name kept as sent.
                final_parsed[name] = {
                    header[len(key):]: value for header, value in pairs if header.lower().startswith(key)
                }
            else:  # statusCode
                final_parsed[name] = self._parse_shape(member, response["status_code"])

    def _handle_list(self, shape, node):
        member = shape.member
        if member.type_name != "structure" or shape.serialization.get("location") == "header":
            return super()._handle_list(shape, node)
        plan = _plan(self, member)
        if plan is None:
            return super()._handle_list(shape, node)
        if shape.serialization.get("flattened") and not isinstance(node, list):
            node = [node]
        return [self._flat_structure(member, plan, item) for item in node]

    def _flat_structure(self, shape, plan: dict, element) -> dict:
        parsed: dict = {}
        for child in element:
            tag = child.tag
            if tag[:1] == "{":  # '{namespace}Name', as botocore's _node_tag strips it
                tag = tag[tag.rfind("}") + 1:]
            entry = plan.get(tag)
            if entry is None:
                continue  # an element no member names: botocore ignores it too
            name, kind, member = entry
            if kind == _LIST:
                text = child.text
                parsed.setdefault(name, []).append("" if text is None else text)
                continue
            if name in parsed:  # a scalar's tag repeated: botocore's own rules for this one
                return super()._handle_structure(shape, element)
            if kind == _DELEGATE:
                parsed[name] = self._parse_shape(member, child)
                continue
            text = child.text
            if text is None:
                text = ""
            parsed[name] = text if kind == "string" or kind == "character" else self._scalar(kind, text)
        return parsed

    def _scalar(self, kind: str, text: str):
        if kind == "timestamp":
            return self._timestamp_parser(text)
        if kind == "boolean":
            return text == "true"
        return int(text)  # integer, long


class FastParserFactory(ResponseParserFactory):
    """botocore's parser factory, with ``FastRestXMLParser`` for REST-XML (S3); other
    protocols (KMS's JSON) get botocore's parsers."""

    def create_parser(self, protocol_name):
        if protocol_name == "rest-xml":
            return FastRestXMLParser(**self._defaults)
        return super().create_parser(protocol_name)


__all__ = ["FastParserFactory", "FastRestXMLParser"]
