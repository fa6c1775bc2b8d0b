"""botocore's REST-XML parser with a fast path for lists of flat structures.

A ListObjectsV2 page is a list of up to 1,000 ``Object`` structures. botocore parses each one
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
tag repeats for a scalar member use botocore's ``_handle_structure`` unchanged. The result equals
botocore's dict for dict (tests/unit/test_xml_lists.py compares them over generated pages).
"""
from __future__ import annotations

import weakref
from typing import Any

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


class FastListXMLParser(RestXMLParser):
    """``RestXMLParser`` whose lists of flat structures parse without the generic walk."""

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


class FastListParserFactory(ResponseParserFactory):
    """botocore's parser factory, with ``FastListXMLParser`` for REST-XML (S3)."""

    def create_parser(self, protocol_name):
        if protocol_name == "rest-xml":
            return FastListXMLParser(**self._defaults)
        return super().create_parser(protocol_name)


__all__ = ["FastListParserFactory", "FastListXMLParser"]
