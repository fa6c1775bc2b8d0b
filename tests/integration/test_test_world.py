"""The tests' moto server is as strict as S3 where moto is not (tests/support/moto_server.py)."""
from __future__ import annotations

import time

import botocore.exceptions
import pytest

from tests.support.moto_server import USER_METADATA_LIMIT


def test_get_object_acl_answers_for_an_object_uploaded_in_parts(aws):
    upload = aws.s3.create_multipart_upload(Bucket=aws.bucket, Key="k")["UploadId"]
    part = aws.s3.upload_part(Bucket=aws.bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"x" * 100)
    aws.s3.complete_multipart_upload(Bucket=aws.bucket, Key="k", UploadId=upload,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    acl = aws.s3.get_object_acl(Bucket=aws.bucket, Key="k")  # moto 5.2.1 alone: 500
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]
    assert acl["Grants"][0]["Grantee"]["ID"] == acl["Owner"]["ID"]


@pytest.mark.parametrize("write", ["put", "copy"])
def test_user_metadata_over_2_kb_is_refused_like_s3(aws, write):
    aws.s3.put_object(Bucket=aws.bucket, Key="k", Body=b"", Metadata={"a": "x" * (USER_METADATA_LIMIT - 1)})  # exactly 2 KB
    big = {"a": "x" * USER_METADATA_LIMIT}
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        if write == "put":
            aws.s3.put_object(Bucket=aws.bucket, Key="k2", Body=b"", Metadata=big)
        else:
            aws.s3.copy_object(Bucket=aws.bucket, Key="k", CopySource={"Bucket": aws.bucket, "Key": "k"},
                               MetadataDirective="REPLACE", Metadata=big)
    assert raised.value.response["Error"]["Code"] == "MetadataTooLarge"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_get_object_retention_answers_like_s3(aws):
    from datetime import datetime, timedelta, timezone

    locked = f"{aws.bucket}-lock"
    aws.s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    until = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    aws.s3.put_object(Bucket=locked, Key="held", Body=b"x", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until)
    aws.s3.put_object(Bucket=locked, Key="free", Body=b"x")
    retention = aws.s3.get_object_retention(Bucket=locked, Key="held")["Retention"]  # moto 5.2.1 alone: 500
    assert (retention["Mode"], retention["RetainUntilDate"]) == ("GOVERNANCE", until)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        aws.s3.get_object_retention(Bucket=locked, Key="free")
    assert raised.value.response["Error"]["Code"] == "NoSuchObjectLockConfiguration"


def _raw_put(port: int, path: str, announced: int, sent: bytes) -> None:
    """A PUT whose client announces ``announced`` bytes, sends ``sent`` and goes away."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {announced}\r\n\r\n"
        sock.sendall(head.encode() + sent)
        if len(sent) == announced:
            sock.recv(65536)  # the answer, so that the PUT is done before the check


@pytest.mark.parametrize("sent", [0, 10])
def test_the_fault_proxy_never_forwards_a_body_cut_short(aws, sent):
    """A worker killed between a PUT's headers and its body (or during it) leaves a request
    short of its Content-Length: S3 stores nothing of it. The proxy used to forward what had
    arrived as a whole request, so moto stored a truncated backup under the checksum header of
    the whole one (seen by the metadata-mode kill suite as FlexibleChecksumError on a GET)."""
    from tests.support.fault_proxy import FaultProxy

    proxy = FaultProxy(aws.server.endpoint).start()
    try:
        _raw_put(proxy.port, f"/{aws.bucket}/whole", 100, b"x" * 100)
        _raw_put(proxy.port, f"/{aws.bucket}/cut", 100, b"x" * sent)
        deadline = time.monotonic() + 5
        while proxy.stats["incomplete-body"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proxy.stop()
    assert aws.s3.head_object(Bucket=aws.bucket, Key="whole")["ContentLength"] == 100
    with pytest.raises(botocore.exceptions.ClientError) as missing:
        aws.s3.head_object(Bucket=aws.bucket, Key="cut")
    assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey")
    assert proxy.stats["incomplete-body"] == 1
