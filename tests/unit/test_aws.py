"""The worker's boto3 clients: the fast timestamp parser gives botocore's values exactly."""
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
