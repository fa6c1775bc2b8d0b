"""The tests' moto server is as strict as S3 where moto is not (tests/support/moto_server.py)."""
from __future__ import annotations

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
