"""The worker's boto3 clients: the fast timestamp parser gives botocore's values exactly."""
import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from keymigration.aws.clients import ClientOptions, make_clients, parse_timestamp
from keymigration.aws.kms import KmsKeys
from keymigration.errors import ConfigurationError, KmsError
from keymigration.formats.envelope import Envelope, Location, WrapAlgorithm
from keymigration.formats.secrets import DataKey

SAMPLES = [
    "2026-11-27T19:37:47.000Z",  # ListObjectsV2 LastModified
    "2026-11-27T19:37:47Z",
    "2026-11-27T19:37:47.123456789Z",
    "2026-11-27T19:37:47+02:00",
    "2026-11-27T19:37:47",  # no zone: botocore keeps it naive
    "2026-11-27",
    "Fri, 27 Nov 2026 19:37:47 GMT",  # HeadObject Last-Modified
    "Thu, 26 Nov 2026 19:37:47 GMT",
    "Fri, 27 Nov 2026 19:37:47 -0000",
    "Fri, 27 Nov 2026 19:37:47 +0100",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    1764272267.5,  # KMS (JSON) epoch seconds
    "1764272267",
]


@pytest.mark.parametrize("value", SAMPLES, ids=str)
def test_fast_timestamp_parser_matches_botocore(value):
    ours, theirs = parse_timestamp(value), botocore_parse_timestamp(value)
    assert ours == theirs
    assert (ours.utcoffset() is None) == (theirs.utcoffset() is None)


@pytest.mark.parametrize(
    "value",
    ["2026-11-27T19:37:47.000Z", "Tue, 24 Nov 2026 19:37:47 GMT", "Thu, 26 Nov 2026 19:37:47 GMT", "Fri, 27 Nov 2026 19:37:47 GMT"],
)
def test_s3_timestamps_never_need_botocores_parser(monkeypatch, value):
    def slow_path(_):
        raise AssertionError("took botocore's dateutil path")

    monkeypatch.setattr("keymigration.aws.clients.botocore_parse_timestamp", slow_path)
    assert parse_timestamp(value).utcoffset() is not None


def test_unparseable_timestamp_fails_like_botocore():
    with pytest.raises(ValueError, match="Invalid timestamp"):
        parse_timestamp("not a date")


def test_clients_parse_timestamps_with_the_fast_parser():
    s3, _ = make_clients(ClientOptions(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    parser = s3._endpoint._response_parser_factory.create_parser("rest-xml")
    assert parser._timestamp_parser is parse_timestamp


def _sent_headers(client, call) -> dict:
    """The headers ``call`` would put on the wire: the request is answered before it is sent."""
    from botocore.awsrequest import AWSResponse

    sent: dict = {}

    class _Raw:
        def stream(self, *_, **__):
            yield b""

    def answer(request, **_):
        sent.update(request.headers)
        return AWSResponse(request.url, 200, {}, _Raw())

    client.meta.events.register_first("before-send", answer)
    call()
    return sent


def test_a_small_put_does_not_wait_for_100_continue(monkeypatch):
    """botocore asks for `100 Continue` before every PUT body; the worker's PUTs are a few
    hundred bytes, for which that costs a round trip and client CPU. Large bodies still ask."""
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    s3, _ = make_clients(ClientOptions(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    small = _sent_headers(s3, lambda: s3.put_object(Bucket="b", Key="k.instruction", Body=b"{}" * 200, IfNoneMatch="*"))
    assert "Expect" not in small and small["If-None-Match"] == b"*"
    large = _sent_headers(s3, lambda: s3.put_object(Bucket="b", Key="big", Body=b"x" * (2 * 1024 * 1024)))
    assert large["Expect"] == b"100-continue"
    plain = boto3.session.Session(region_name="eu-west-1").client("s3", endpoint_url="http://127.0.0.1:9")
    assert "Expect" in _sent_headers(plain, lambda: plain.put_object(Bucket="b", Key="k", Body=b"{}"))  # what it replaces


class _Unreachable:
    """A KMS client whose every request fails before an answer, as botocore reports it."""

    def __getattr__(self, action):
        def call(**_):
            raise EndpointConnectionError(endpoint_url="https://kms.invalid")

        return call


def test_kms_connection_errors_become_retryable_kms_errors():
    # The engine (migrate/) catches ObjectError only and may not import botocore (import-linter):
    # every per-object KMS request must map botocore's own errors too.
    kms = KmsKeys(_Unreachable(), "arn:aws:kms:eu-west-1:111122223333:key/target", source_key_ids=["old"])
    envelope = Envelope("v2", b"edk", WrapAlgorithm.KMS_CONTEXT, "AES/GCM/NoPadding", {}, Location.METADATA, iv=b"\0" * 12)
    calls = [
        lambda: kms.encrypt(DataKey(b"k" * 32), envelope),
        lambda: kms.decrypt(b"edk", {}, kms.target_key_id),
        lambda: kms.reencrypt(envelope),
        lambda: kms.check_decryptable(b"edk", {}),
    ]
    for call in calls:
        with pytest.raises(KmsError) as caught:
            call()
        assert caught.value.reason == "kms-connection" and caught.value.retryable
        assert "EndpointConnectionError" in str(caught.value)


class _PartRecorder:
    """An S3 client that records a multipart copy's parts without moving any bytes."""

    def __init__(self):
        self.ranges: list[tuple[int, int]] = []
        self.meta = type("Meta", (), {"events": type("Events", (), {"register": staticmethod(lambda *a, **k: None)})()})()

    def get_object_tagging(self, **_):
        return {"TagSet": []}

    def get_object_lock_configuration(self, **_):
        return {}

    def head_object(self, **_):
        return {}

    def create_multipart_upload(self, **_):
        return {"UploadId": "u"}

    def upload_part_copy(self, CopySourceRange, PartNumber, **_):  # noqa: N803 - boto3's names
        first, last = (int(n) for n in CopySourceRange[len("bytes="):].split("-"))
        assert PartNumber == len(self.ranges) + 1
        self.ranges.append((first, last))
        return {"CopyPartResult": {"ETag": f'"{PartNumber}"'}}

    def complete_multipart_upload(self, MultipartUpload, **_):  # noqa: N803
        return {"ETag": f'"x-{len(MultipartUpload["Parts"])}"'}

    def abort_multipart_upload(self, **_):
        pass


TiB, GiB, MiB = 1024**4, 1024**3, 1024**2


@pytest.mark.parametrize("size", [5 * GiB + 1, 4 * TiB + 900 * GiB, 5 * TiB, 10_000 * 5 * GiB])
def test_multipart_copy_stays_within_10000_parts_of_at_most_5_gib(size):
    """S3 allows 10,000 parts of 5 MiB to 5 GiB: 512 MiB parts overflow above 4.88 TiB, and S3
    now stores objects up to 48.8 TiB (10,000 x 5 GiB)."""
    from keymigration.aws.copy import MetadataRewriter
    from keymigration.aws.s3 import Bucket

    client = _PartRecorder()
    etag = MetadataRewriter(Bucket(client, "b")).rewrite("k", {"ETag": '"e"', "ContentLength": size}, {})
    ranges = client.ranges
    assert len(ranges) <= 10_000 and etag == f'"x-{len(ranges)}"'
    assert ranges[0][0] == 0 and ranges[-1][1] == size - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))  # contiguous, no byte twice
    assert all(5 * MiB <= last - first + 1 <= 5 * GiB for first, last in ranges[:-1])


def test_an_object_beyond_s3s_maximum_is_refused_before_any_request():
    from keymigration.aws.copy import MetadataRewriter
    from keymigration.aws.s3 import Bucket
    from keymigration.errors import CutOverRefused

    client = _PartRecorder()
    with pytest.raises(CutOverRefused) as refused:
        MetadataRewriter(Bucket(client, "b")).rewrite("k", {"ETag": '"e"', "ContentLength": 10_000 * 5 * GiB + 1}, {})
    assert refused.value.reason == "object-too-large" and client.ranges == []


def test_region_from_aws_region_alone(monkeypatch):
    """EKS and the kind quickstart's Secret set AWS_REGION; botocore itself reads only
    AWS_DEFAULT_REGION (and config files)."""
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    s3, kms = make_clients(ClientOptions(endpoint_url="http://127.0.0.1:9"))
    assert s3.meta.region_name == kms.meta.region_name == "eu-west-3"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")  # both: AWS_REGION wins, as in the other AWS SDKs
    assert make_clients(ClientOptions(endpoint_url="http://127.0.0.1:9"))[0].meta.region_name == "eu-west-3"
    assert make_clients(ClientOptions(region="ap-south-1", endpoint_url="http://127.0.0.1:9"))[0].meta.region_name == "ap-south-1"


def test_no_region_at_all_is_a_configuration_error(monkeypatch):
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(ConfigurationError, match="AWS_REGION"):
        make_clients(ClientOptions(endpoint_url="http://127.0.0.1:9"))


def test_telemetry_counts_throttles_and_server_errors_also_in_a_200s_body():
    from types import SimpleNamespace

    from keymigration.aws.clients import Telemetry

    telemetry = Telemetry()
    answers = [
        (200, {"ETag": '"e"'}), (204, {}), (200, None),  # successes: nothing counted
        (200, {"Error": {"Code": "SlowDown"}}),  # S3's error in a 200 body (a copy)
        (503, {"Error": {"Code": "SlowDown"}}), (400, {"Error": {"Code": "ThrottlingException"}}),
        (500, {"Error": {"Code": "InternalError"}}), (404, {"Error": {"Code": "NoSuchKey"}}),
    ]
    for status, parsed in answers:
        telemetry._on_attempt(response=(SimpleNamespace(status_code=status), parsed))
    telemetry._on_attempt(caught_exception=ConnectionError())
    assert telemetry.faults() == {"throttled": 3, "server_errors": 1, "connection_errors": 1}
