"""A real moto server over HTTP on 127.0.0.1, as a separate process (see keymigration.demo.standins).

Integration tests talk to it exactly as the worker talks to AWS: through boto3 with an
endpoint URL. Workers started by tests are separate processes and reach the same server.

The tests' server is moto with two corrections, applied a few lines before moto's ``main()``
so that the test world is as strict as S3 where the project depends on it
(../shared/docs/moto-fidelity.md):

* GetObjectAcl on an object completed by a multipart upload answers the owner's grants, as S3
  does; moto 5.2.1 keeps no ACL for such keys and answers 500. (The cut-over's ACL check stays.)
* User metadata over S3's 2 KB limit is refused with ``400 MetadataTooLarge``: "the
  user-defined metadata is limited to 2 KB in size ... the sum of the number of bytes in the
  UTF-8 encoding of each key and value" (S3 User Guide, "Working with object metadata").
  moto accepts any size, so a tool that grew metadata past the limit would pass here and fail
  on S3.
* GetObjectRetention answers the object's retention, or ``NoSuchObjectLockConfiguration`` when
  it has none, as S3 does; moto 5.2.1 does not implement it (500).
"""
from keymigration.demo.standins import _LAUNCH, FAKE_CREDENTIALS, REGION, free_port
from keymigration.demo.standins import MotoServer as _DemoMotoServer

USER_METADATA_LIMIT = 2048  # bytes of user-metadata keys (without x-amz-meta-) and values, UTF-8

_PATCHES = """
import moto.s3.models as _models, moto.s3.responses as _responses
from moto.s3.exceptions import S3ClientError as _S3ClientError

_get_object_acl = _models.S3Backend.get_object_acl
def _owner_acl_when_none(self, key):
    # S3 gives a multipart-completed object the owner's FULL_CONTROL, like any new object.
    return _get_object_acl(self, key) or _models.get_canned_acl("private")
_models.S3Backend.get_object_acl = _owner_acl_when_none

_metadata_from_headers = _responses.metadata_from_headers
def _metadata_within_limit(headers):
    metadata = _metadata_from_headers(headers)
    size = sum(len(k[len("x-amz-meta-"):].encode()) + len(str(v).encode())
               for k, v in metadata.items() if k.lower().startswith("x-amz-meta-"))
    if size > USER_METADATA_LIMIT:
        raise _S3ClientError("MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size")
    return metadata
_responses.metadata_from_headers = _metadata_within_limit

_key_response_get = _responses.S3Response._key_response_get
def _with_get_object_retention(self, query, key_name):
    if "retention" not in query:
        return _key_response_get(self, query, key_name)
    key, _ = self._get_key()
    if not key.lock_mode:
        raise _S3ClientError("NoSuchObjectLockConfiguration", "The specified object does not have a ObjectLock configuration")
    body = ('<?xml version="1.0" encoding="UTF-8"?><Retention xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Mode>{key.lock_mode}</Mode><RetainUntilDate>{key.lock_until}</RetainUntilDate></Retention>")
    return 200, {"Content-Type": "application/xml"}, body
_responses.S3Response._key_response_get = _with_get_object_retention
"""
_PATCHES = f"USER_METADATA_LIMIT = {USER_METADATA_LIMIT}\n" + _PATCHES
_MAIN = "from moto.server import main; main(sys.argv[1:])"
assert _LAUNCH.endswith(_MAIN)
TEST_LAUNCH = _LAUNCH[: -len(_MAIN)] + _PATCHES + _MAIN


class MotoServer(_DemoMotoServer):
    """The demo's moto server with the corrections above."""

    launch = TEST_LAUNCH


__all__ = ["FAKE_CREDENTIALS", "REGION", "USER_METADATA_LIMIT", "MotoServer", "free_port"]
