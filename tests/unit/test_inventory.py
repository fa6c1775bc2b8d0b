"""S3 Inventory input: checksums, file selection, row filters, key decoding, resume position."""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from keymigration.migrate.checkpoint import Checkpoint
from keymigration.migrate.inventory import InventoryError, InventorySource, load_manifest, select_files
from keymigration.migrate.sources import KeyRange
from tests.support.inventory import CURRENT_SCHEMA, Row, write_inventory

NOT_OBJECTS = (".instruction", ".keymigration-backup")


class FakeObjects:
    """put_object / get_object (with IfMatch) over a dict, bodies streamed like botocore's."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.gets: Counter[str] = Counter()

    def put_object(self, Bucket, Key, Body):
        self.objects[(Bucket, Key)] = Body

    def get_object(self, Bucket, Key, IfMatch=None):
        self.gets[Key] += 1
        if (Bucket, Key) not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        body = self.objects[(Bucket, Key)]
        etag = f'"{hashlib.md5(body).hexdigest()}"'
        if IfMatch is not None and IfMatch != etag:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "GetObject")
        return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ETag": etag}


def source(s3, url, bucket="src", prefix="", files=None, key_range=KeyRange()):
    manifest = load_manifest(s3, url)
    return InventorySource(s3, manifest, bucket, prefix, NOT_OBJECTS, select_files(len(manifest.files), files), key_range)


def keys_of(src, checkpoint=None, aux=None):
    aux = Counter() if aux is None else aux
    return [item.key for item in src.items(checkpoint or Checkpoint("src", "", ".instruction", "t"), aux)]


AWKWARD = ["a b", "a+b", "100%", "é/中文", "😀.txt", "dir/", "q?x=1&y", "tab\tkey"]


def test_rows_become_objects_with_keys_decoded_and_non_objects_skipped():
    s3 = FakeObjects()
    rows = [Row(k) for k in AWKWARD] + [
        Row("a b.instruction"), Row("x.keymigration-backup"), Row("old", latest=False), Row("gone", delete_marker=True),
        Row("x.keymigration-backup.2"), Row("a b.instruction.keymigration-backup.3"),  # rotations' backups
    ]
    url = write_inventory(s3, "dest", "src", [rows[:6], rows[6:]])
    src = source(s3, url)
    aux = Counter()
    assert keys_of(src, aux=aux) == AWKWARD
    assert aux == Counter({".instruction": 1, ".keymigration-backup": 3})
    assert src.summary()["inventory_rows_skipped"] == {"not-latest": 1, "delete-marker": 1}
    assert all(item.hint is None for item in src.items(Checkpoint("src", "", ".i", "t"), Counter()))


def test_current_versions_schema_without_version_columns():
    s3 = FakeObjects()
    url = write_inventory(s3, "dest", "src", [[Row("p/a"), Row("q/b"), Row("p/c")]], schema=CURRENT_SCHEMA)
    assert keys_of(source(s3, url, prefix="p/")) == ["p/a", "p/c"]
    assert keys_of(source(s3, url, key_range=KeyRange("p/a", "q/b"))) == ["q/b", "p/c"]


def test_each_data_file_is_checked_before_any_row_is_used():
    s3 = FakeObjects()
    url = write_inventory(s3, "dest", "src", [[Row("a")], [Row("b")]])
    manifest = load_manifest(s3, url)
    second = manifest.files[1].key
    body = s3.objects[("dest", second)]
    s3.objects[("dest", second)] = body[:-1] + bytes([body[-1] ^ 0xFF])  # changed after the manifest
    items = source(s3, url).items(Checkpoint("src", "", ".i", "t"), Counter())
    assert next(items).key == "a"
    with pytest.raises(InventoryError, match="MD5"):
        next(items)
    assert s3.gets[second] == 1  # hashed once, never parsed


def test_manifest_checksum_and_format_are_checked():
    s3 = FakeObjects()
    url = write_inventory(s3, "dest", "src", [[Row("a")]])
    stamp = url[len("s3://dest/"):].rsplit("/", 1)[0]
    good = s3.objects[("dest", f"{stamp}/manifest.json")]
    s3.objects[("dest", f"{stamp}/manifest.json")] = good.replace(b'"src"', b'"sr2"')
    with pytest.raises(InventoryError, match="manifest.checksum"):
        load_manifest(s3, url)
    parquet = json.loads(good)
    parquet["fileFormat"] = "Parquet"
    body = json.dumps(parquet).encode()
    s3.objects[("dest", f"{stamp}/manifest.json")] = body
    s3.objects[("dest", f"{stamp}/manifest.checksum")] = hashlib.md5(body).hexdigest().encode() + b"\n"
    with pytest.raises(InventoryError, match="only CSV"):
        load_manifest(s3, url)
    with pytest.raises(InventoryError, match="s3://"):
        load_manifest(s3, "dest/manifest.json")
    with pytest.raises(InventoryError, match="cannot read"):
        load_manifest(s3, "s3://dest/nothing/manifest.json")


def test_an_inventory_of_another_bucket_is_refused():
    s3 = FakeObjects()
    url = write_inventory(s3, "dest", "src", [[Row("a")]])
    with pytest.raises(InventoryError, match="lists bucket 'src'"):
        source(s3, url, bucket="other")


def test_file_selection_partitions_the_data_files():
    assert select_files(7, None) == list(range(7))
    shards = [select_files(7, f"{i}/3") for i in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert select_files(7, "2-4,6") == [2, 3, 4, 6] and select_files(3, "1-9") == [1, 2] and select_files(3, "5") == []
    for bad in ("3/3", "1/0", "4-2", "x", "-1"):
        with pytest.raises(InventoryError):
            select_files(7, bad)


def test_shards_of_the_files_see_every_object_once():
    s3 = FakeObjects()
    files = [[Row(f"k{f}-{r}") for r in range(5)] for f in range(5)]
    url = write_inventory(s3, "dest", "src", files)
    seen = [k for i in range(2) for k in keys_of(source(s3, url, files=f"{i}/2"))]
    assert sorted(seen) == sorted(r.key for rows in files for r in rows)


def test_resume_skips_exactly_the_rows_up_to_the_position():
    s3 = FakeObjects()
    files = [[Row(f"f{f}-{r}") for r in range(4)] for f in range(3)]
    url = write_inventory(s3, "dest", "src", files)
    src = source(s3, url)
    checkpoint = Checkpoint("src", "", ".instruction", "t")
    items = list(src.items(checkpoint, Counter()))
    src.mark(checkpoint, items[5].position)  # f1-1 and all before it are done
    assert checkpoint.position == {"file": 1, "row": 1}
    assert keys_of(src, checkpoint) == ["f1-2", "f1-3", "f2-0", "f2-1", "f2-2", "f2-3"]
    assert keys_of(source(s3, url, files="0/2"), checkpoint) == ["f2-0", "f2-1", "f2-2", "f2-3"]


@pytest.mark.parametrize("fast", [True, False])
def test_key_decoding_is_unquote_plus(monkeypatch, fast):
    from urllib.parse import quote, quote_plus, unquote_plus

    from keymigration.migrate import inventory

    if not fast:
        monkeypatch.setattr(inventory, "_ESCAPE_DECODE", None)
    odd = ["a%", "%zz", "50%+off", "%C3", "plain", "", "a+b%2B%2b", "ü/%2f", "a\\x41%41", "\\", "%\\x", "é%C3%A9"]
    for key in AWKWARD + odd:
        for encoded in (quote_plus(key, safe=""), quote_plus(key), quote(key), key):
            assert inventory.decode_key(encoded) == unquote_plus(encoded), encoded
