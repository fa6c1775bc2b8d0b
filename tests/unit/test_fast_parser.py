"""The fast list parser gives botocore's own result, dict for dict, on awkward listing pages."""
import random
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.awsrequest import HeadersDict
from botocore.parsers import RestXMLParser

from keymigration.aws.clients import ClientOptions, make_clients, parse_timestamp
from keymigration.aws.fast_parser import FastRestXMLParser

S3 = botocore.session.get_session().get_service_model("s3")
NS = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
KEY_CHARS = "abcXYZ019/._-+ =&<>'\"%é€😀\u2028"


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(KEY_CHARS) for _ in range(rng.randint(0, 12)))


def _element(tag: str, text: str | None) -> str:
    return f"<{tag}/>" if text is None else f"<{tag}>{escape(text)}</{tag}>"


def _object(rng: random.Random, tag: str = "Contents", version: bool = False) -> str:
    parts = [_element("Key", _key(rng))]
    if rng.random() < 0.9:
        parts.append(_element("LastModified", rng.choice(["2026-11-30T16:06:13.000Z", "2009-10-12T17:50:30Z"])))
    if rng.random() < 0.9:
        parts.append(_element("ETag", rng.choice(['"9dd4e461268c8034f5c8564e155c67a6"', '"abc-12"', ""])))
    for _ in range(rng.choice([0, 0, 1, 2])):
        parts.append(_element("ChecksumAlgorithm", rng.choice(["CRC32", "CRC64NVME", "SHA256", None])))
    if rng.random() < 0.3:
        parts.append(_element("ChecksumType", rng.choice(["FULL_OBJECT", "COMPOSITE"])))
    if rng.random() < 0.9:
        parts.append(_element("Size", str(rng.choice([0, 1, 5 * 2**40, 1234567]))))
    if rng.random() < 0.8:
        parts.append(_element("StorageClass", rng.choice(["STANDARD", "GLACIER", "INTELLIGENT_TIERING", None])))
    if rng.random() < 0.3:
        owner = _element("ID", "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a")
        if rng.random() < 0.5:
            owner += _element("DisplayName", "mtd@amazon.com")
        parts.append(f"<Owner>{owner}</Owner>")
    if rng.random() < 0.2:
        status = _element("IsRestoreInProgress", rng.choice(["true", "false"]))
        if rng.random() < 0.5:
            status += _element("RestoreExpiryDate", "2026-12-01T00:00:00.000Z")
        parts.append(f"<RestoreStatus>{status}</RestoreStatus>")
    if version:
        parts.append(_element("VersionId", rng.choice(["null", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"])))
        parts.append(_element("IsLatest", rng.choice(["true", "false"])))
    if rng.random() < 0.1:
        parts.append(_element("SomethingNew", "a future member botocore does not know"))
    if rng.random() < 0.05:
        parts.append(_element("StorageClass", "STANDARD"))  # a scalar's tag repeated
    rng.shuffle(parts)
    return f"<{tag}>{''.join(parts)}</{tag}>"


def _listing_v2(rng: random.Random) -> bytes:
    body = [_element("Name", "bucket"), _element("Prefix", _key(rng)), _element("KeyCount", "3"), _element("MaxKeys", "1000")]
    body.append(_element("IsTruncated", rng.choice(["true", "false"])))
    if rng.random() < 0.5:
        body.append(_element("NextContinuationToken", "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="))
    body += [_object(rng) for _ in range(rng.choice([0, 1, 2, 7]))]
    body += [f"<CommonPrefixes>{_element('Prefix', _key(rng))}</CommonPrefixes>" for _ in range(rng.choice([0, 1, 3]))]
    ns = NS if rng.random() < 0.8 else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult{ns}>{"".join(body)}</ListBucketResult>'.encode()


def _versions(rng: random.Random) -> bytes:
    body = [_element("Name", "bucket"), _element("IsTruncated", "false")]
    body += [_object(rng, "Version", version=True) for _ in range(rng.choice([0, 1, 4]))]
    body += [
        f"<DeleteMarker>{_element('Key', _key(rng))}{_element('VersionId', 'v')}{_element('IsLatest', 'true')}"
        f"{_element('LastModified', '2026-11-30T16:06:13.000Z')}</DeleteMarker>"
        for _ in range(rng.choice([0, 2]))
    ]
    return f'<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult{NS}>{"".join(body)}</ListVersionsResult>'.encode()


def _comparable(value):
    """botocore returns the raw elements for a scalar whose tag repeats: compare their content."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if hasattr(value, "tag") and hasattr(value, "text"):
        return ("element", value.tag, value.text)
    return value


def _parse(parser_class, operation: str, body: bytes) -> dict:
    parser = parser_class(timestamp_parser=parse_timestamp)
    response = {"body": body, "headers": {}, "status_code": 200}
    return _comparable(parser.parse(response, S3.operation_model(operation).output_shape))


@pytest.mark.parametrize("seed", range(300))
def test_a_listing_page_parses_as_botocore_parses_it(seed):
    rng = random.Random(seed)
    body = _listing_v2(rng)
    assert _parse(FastRestXMLParser, "ListObjectsV2", body) == _parse(RestXMLParser, "ListObjectsV2", body)


@pytest.mark.parametrize("seed", range(100))
def test_a_versions_page_parses_as_botocore_parses_it(seed):
    body = _versions(random.Random(seed))
    assert _parse(FastRestXMLParser, "ListObjectVersions", body) == _parse(RestXMLParser, "ListObjectVersions", body)


def test_the_fast_path_is_taken_for_an_objects_list_and_values_have_botocores_types():
    body = (
        f'<ListBucketResult{NS}><Contents><Key>a&amp;b</Key><LastModified>2026-11-30T16:06:13.000Z</LastModified>'
        "<ETag>&quot;e&quot;</ETag><Size>5497558138880</Size><StorageClass/><ChecksumAlgorithm>CRC32</ChecksumAlgorithm>"
        "</Contents></ListBucketResult>"
    ).encode()
    calls = []

    class Counting(FastRestXMLParser):
        def _handle_structure(self, shape, node):
            calls.append(shape.name)
            return super()._handle_structure(shape, node)

    (item,) = _parse(Counting, "ListObjectsV2", body)["Contents"]
    assert "Object" not in calls  # not botocore's generic walk
    assert item == {
        "Key": "a&b", "LastModified": parse_timestamp("2026-11-30T16:06:13.000Z"), "ETag": '"e"',
        "Size": 5497558138880, "StorageClass": "", "ChecksumAlgorithm": ["CRC32"],
    }


def test_a_malformed_number_fails_as_botocore_fails():
    body = f"<ListBucketResult{NS}><Contents><Key>k</Key><Size>x</Size></Contents></ListBucketResult>".encode()
    for parser in (RestXMLParser, FastRestXMLParser):
        with pytest.raises(ValueError):
            _parse(parser, "ListObjectsV2", body)


def test_the_worker_clients_use_the_fast_parser(monkeypatch):
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    s3, _ = make_clients(ClientOptions(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    assert isinstance(s3._endpoint._response_parser_factory.create_parser("rest-xml"), FastRestXMLParser)


ACL = f"""<?xml version="1.0" encoding="UTF-8"?>
<AccessControlPolicy{NS}><Owner><ID>owner-id</ID><DisplayName>owner</DisplayName></Owner><AccessControlList>
<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser"><ID>owner-id</ID>
<DisplayName>owner</DisplayName></Grantee><Permission>FULL_CONTROL</Permission></Grant>
<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group">
<URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant>
<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="AmazonCustomerByEmail">
<EmailAddress>a@example.com</EmailAddress></Grantee><Permission>WRITE_ACP</Permission></Grant>
</AccessControlList></AccessControlPolicy>""".encode()


def test_an_acl_parses_as_botocore_parses_it():
    """The cut-over refuses objects with grants beyond the owner's: the grantees' types (an XML
    attribute) must come out exactly as botocore gives them."""
    ours = _parse(FastRestXMLParser, "GetObjectAcl", ACL)
    assert ours == _parse(RestXMLParser, "GetObjectAcl", ACL)
    assert [g["Grantee"]["Type"] for g in ours["Grants"]] == ["CanonicalUser", "Group", "AmazonCustomerByEmail"]


OTHER_LISTS = {
    # Every other S3 answer with a list of structures that the worker reads.
    "GetObjectTagging": f"""<Tagging{NS}><TagSet><Tag><Key>a&amp;b</Key><Value></Value></Tag>
<Tag><Key>team</Key><Value>€ pay</Value></Tag></TagSet></Tagging>""",
    "GetBucketOwnershipControls": f"""<OwnershipControls{NS}><Rule><ObjectOwnership>BucketOwnerEnforced</ObjectOwnership>
</Rule></OwnershipControls>""",
}


@pytest.mark.parametrize("operation", sorted(OTHER_LISTS))
def test_other_lists_the_worker_reads_parse_as_botocore_parses_them(operation):
    body = OTHER_LISTS[operation].encode()
    ours = _parse(FastRestXMLParser, operation, body)
    assert ours == _parse(RestXMLParser, operation, body)
    assert ours.get("TagSet") or ours.get("OwnershipControls")


# Header members: every response's headers, parsed by botocore's rules.
HEADER_OPERATIONS = ("HeadObject", "PutObject", "GetObject", "CopyObject", "CompleteMultipartUpload", "GetObjectTagging")
HEADER_VALUES = {
    "timestamp": ["Mon, 30 Nov 2026 18:46:52 GMT", "2026-11-30T18:46:52.000Z"],
    "integer": ["0", "123", "5497558138880"],
    "long": ["0", "5497558138880"],
    "boolean": ["true", "false", "True", ""],
    "string": ["", "AES256", "arn:aws:kms:eu-west-1:111122223333:key/k", '"9dd4e461268c8034f5c8564e155c67a6"', "é, ü"],
}


def _random_case(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.3 else c for c in name)


def _headers(rng: random.Random, shape) -> dict[str, str]:
    headers = {}
    for name, member in shape.members.items():
        serialization = member.serialization
        if serialization.get("location") == "header" and rng.random() < 0.4:
            kind = member.type_name if member.type_name in HEADER_VALUES else "string"
            headers[_random_case(rng, serialization.get("name", name))] = rng.choice(HEADER_VALUES[kind])
        elif serialization.get("location") == "headers":
            prefix = serialization.get("name", "")
            for _ in range(rng.choice([0, 1, 3, 8])):
                headers[_random_case(rng, prefix) + _random_case(rng, rng.choice(["x-amz-key-v2", "x-amz-iv", "Team", "é"]))] = _key(rng)
    for _ in range(rng.choice([0, 2])):
        headers[_random_case(rng, rng.choice(["Server", "Date", "x-amzn-requestid", "Connection", "x-amz-meta"]))] = _key(rng)
    return headers


def _parse_headers(parser_class, operation: str, headers: dict, status: int = 200, body: bytes = b"") -> dict:
    parser = parser_class(timestamp_parser=parse_timestamp)
    response = {"body": body, "headers": HeadersDict(headers), "status_code": status}
    return _comparable(parser.parse(response, S3.operation_model(operation).output_shape))


@pytest.mark.parametrize("seed", range(120))
def test_header_members_parse_as_botocore_parses_them(seed):
    rng = random.Random(seed)
    operation = HEADER_OPERATIONS[seed % len(HEADER_OPERATIONS)]
    headers = _headers(rng, S3.operation_model(operation).output_shape)
    body = OTHER_LISTS["GetObjectTagging"].encode() if operation == "GetObjectTagging" else b""
    try:
        expected = _parse_headers(RestXMLParser, operation, headers, body=body)
    except ValueError as error:  # a value botocore refuses for its type: refused alike
        with pytest.raises(type(error)):
            _parse_headers(FastRestXMLParser, operation, headers, body=body)
        return
    assert _parse_headers(FastRestXMLParser, operation, headers, body=body) == expected


def test_a_head_reads_metadata_and_typed_headers_without_a_lookup_per_member(monkeypatch):
    headers = {
        "ETag": '"e"', "Content-Length": "100", "last-modified": "Mon, 30 Nov 2026 18:46:52 GMT",
        "X-Amz-Meta-X-Amz-Key-V2": "a2V5", "x-amz-meta-Team": "pay", "x-amz-server-side-encryption": "aws:kms",
        "x-amz-missing-meta": "1",
    }
    lookups = []
    real = HeadersDict.__getitem__
    monkeypatch.setattr(HeadersDict, "__getitem__", lambda self, key: lookups.append(key) or real(self, key))
    parsed = _parse_headers(FastRestXMLParser, "HeadObject", headers)
    assert len(lookups) < 5  # botocore's loop: one per header member and two per header
    assert parsed["Metadata"] == {"X-Amz-Key-V2": "a2V5", "Team": "pay"}
    assert parsed["ContentLength"] == 100 and parsed["ETag"] == '"e"' and parsed["MissingMeta"] == 1
    assert parsed["LastModified"] == parse_timestamp("Mon, 30 Nov 2026 18:46:52 GMT")
    assert parsed["ResponseMetadata"]["HTTPHeaders"]["x-amz-meta-team"] == "pay"


def test_headers_that_are_a_plain_dict_are_looked_up_as_botocore_looks_them_up():
    """A plain dict is case-sensitive for botocore: so it is for the fast parser."""
    headers = {"ETag": '"e"', "content-length": "7", "x-amz-meta-a": "1"}
    for operation in ("HeadObject", "PutObject"):
        ours = FastRestXMLParser(timestamp_parser=parse_timestamp).parse(
            {"body": b"", "headers": dict(headers), "status_code": 200}, S3.operation_model(operation).output_shape)
        theirs = RestXMLParser(timestamp_parser=parse_timestamp).parse(
            {"body": b"", "headers": dict(headers), "status_code": 200}, S3.operation_model(operation).output_shape)
        assert ours == theirs


def test_an_error_response_parses_as_botocore_parses_it():
    body = b"<Error><Code>NoSuchKey</Code><Message>gone</Message><RequestId>r</RequestId></Error>"
    headers = {"x-amz-request-id": "r", "x-amz-id-2": "h", "Content-Type": "application/xml"}
    for operation in ("HeadObject", "PutObject", "GetObject"):
        assert _parse_headers(FastRestXMLParser, operation, headers, 404, body) == _parse_headers(
            RestXMLParser, operation, headers, 404, body)


def test_the_response_headers_stay_a_case_insensitive_mapping_after_the_parse():
    response = {"body": b"", "headers": HeadersDict({"ETag": '"e"', "X-Amz-Meta-A": "1"}), "status_code": 200}
    FastRestXMLParser(timestamp_parser=parse_timestamp).parse(response, S3.operation_model("HeadObject").output_shape)
    headers = response["headers"]
    assert headers["etag"] == '"e"' and "x-amz-meta-a" in headers and len(headers) == 2
    headers["New"] = "v"
    assert dict(headers.items()) == {"ETag": '"e"', "X-Amz-Meta-A": "1", "New": "v"}


def test_the_parsers_view_of_the_headers_follows_writes_through_it():
    from keymigration.aws.fast_parser import _ListedHeaders

    original = HeadersDict({"ETag": '"e"', "X-Amz-Meta-A": "1"})
    view = _ListedHeaders(original)
    assert view["ETag"] == view["etag"] == '"e"' and view.items() == [("ETag", '"e"'), ("X-Amz-Meta-A", "1")]
    view["etag"] = '"f"'
    assert view["ETag"] == original["ETag"] == '"f"'
    del view["x-amz-meta-a"]
    assert view.items() == [("ETag", '"f"')]
    with pytest.raises(KeyError):
        view["X-Amz-Meta-A"]
