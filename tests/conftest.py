import itertools
import uuid

import pytest

from tests.support.moto_server import MotoServer


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    yield server
    server.stop()


class Aws:
    """Clients on the shared moto server, a fresh bucket and a fresh target KMS key."""

    _counter = itertools.count()

    def __init__(self, server: MotoServer):
        self.server = server
        self.s3 = server.client("s3")
        self.kms = server.client("kms")
        self.bucket = f"test-{next(self._counter)}-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.target_key = self.kms.create_key(Description="target")["KeyMetadata"]["Arn"]

    def new_kms_key(self) -> str:
        return self.kms.create_key()["KeyMetadata"]["Arn"]

    def keys(self, prefix=""):
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def snapshot(self, key):
        head = self.s3.head_object(Bucket=self.bucket, Key=key)
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body, head["ETag"], head["Metadata"], head["LastModified"]


@pytest.fixture
def aws(moto_server):
    return Aws(moto_server)
