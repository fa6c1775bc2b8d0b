"""The worker's clients sign on the wire exactly as botocore signs (moto checks no signature)."""
import copy
import datetime

import botocore.auth
from botocore.auth import S3SigV4Auth, SigV4Auth

from keymigration.aws.clients import ClientOptions, make_clients
from tests.support.moto_server import FAKE_CREDENTIALS, REGION


def test_real_client_requests_carry_botocore_signatures(moto_server, monkeypatch):
    """Each request the worker's clients send (HEAD, PUT with metadata and conditions, a listing,
    KMS calls), re-signed by botocore's class at its own instant, has the same signature."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    s3, kms = make_clients(ClientOptions(endpoint_url=moto_server.endpoint, region=REGION))
    checked = []

    def resign(request, operation_name=None, **_):
        stock = S3SigV4Auth if request.url.find("/sig-bucket") > 0 else SigV4Auth
        expected = copy.deepcopy(request)
        when = datetime.datetime.strptime(request.context["timestamp"], botocore.auth.SIGV4_TIMESTAMP)
        original = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda: when
        try:
            credentials = (s3 if stock is S3SigV4Auth else kms)._request_signer._credentials.get_frozen_credentials()
            stock(credentials, "s3" if stock is S3SigV4Auth else "kms", REGION).add_auth(expected)
        finally:
            botocore.auth.get_current_datetime = original
        checked.append((request.headers["Authorization"], expected.headers["Authorization"]))

    for client in (s3, kms):
        # After the signer (same event) and before botocore adds its unsigned retry headers.
        client.meta.events.register_last(f"request-created.{client.meta.service_model.service_id.hyphenize()}", resign)
    s3.create_bucket(Bucket="sig-bucket")
    s3.put_object(Bucket="sig-bucket", Key="a b/é", Body=b"{}", Metadata={"x-amz-crypto-instr-file": "", "k": "v"},
                  ContentType="application/json", IfNoneMatch="*")
    s3.head_object(Bucket="sig-bucket", Key="a b/é")
    s3.list_objects_v2(Bucket="sig-bucket", Prefix="a b/", MaxKeys=10)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"k" * 32, EncryptionContext={"kms_cmk_id": key})["CiphertextBlob"]
    kms.decrypt(CiphertextBlob=blob, EncryptionContext={"kms_cmk_id": key}, KeyId=key)
    assert len(checked) == 7
    for sent, expected in checked:
        assert sent == expected
