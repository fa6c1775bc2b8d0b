"""The listing look-ahead: hints are right, complete only when proven, memory bounded."""
from collections import Counter

from keymigration.migrate.listing import Listed, changed_keys, start_after_for, with_hints
from tests.support.fake_listing import FakeListing


def listing(*keys):
    return [Listed(k, f"etag-{k}", 1) for k in sorted(keys)]


def run(keys, window=100, suffixes=(".instruction",)):
    skipped = Counter()
    out = list(with_hints(listing(*keys), suffixes, (".keymigration-backup",), window=window, skipped=skipped))
    return {o.key: (dict(o.hint.files), o.hint.complete) for o in out}, [o.key for o in out], skipped


def test_hints_find_instruction_files_past_keys_in_between():
    hints, order, skipped = run(["a", "a-1", "a-2", "a.instruction", "a.instruction.keymigration-backup", "b", "b.x"])
    assert order == ["a", "a-1", "a-2", "b", "b.x"]
    assert hints["a"] == ({"a.instruction": "etag-a.instruction"}, True)
    assert hints["a-1"] == ({}, True) and hints["b"] == ({}, True)
    assert skipped == Counter({".instruction": 1, ".keymigration-backup": 1})


def test_custom_suffix_and_default_both_reported():
    hints, _, _ = run(["k", "k.instruction", "k.rewrapped"], suffixes=(".instruction", ".rewrapped"))
    assert hints["k"] == ({"k.instruction": "etag-k.instruction", "k.rewrapped": "etag-k.rewrapped"}, True)


def test_full_window_releases_with_incomplete_hint():
    keys = ["a"] + [f"a-{i:03}" for i in range(10)] + ["a.instruction"]
    hints, order, _ = run(keys, window=3)
    assert order[0] == "a"
    assert hints["a"] == ({}, False)  # unknown: the worker must ask S3
    assert all(complete for key, (_, complete) in hints.items() if key != "a" and key < "a-007")


def test_listing_order_kept_and_unicode_order_matches_s3():
    keys = ["z", "é", "e", "e.instruction", "€"]
    _, order, _ = run(keys)
    assert order == sorted(k for k in keys if not k.endswith(".instruction"))
    assert sorted(["é", "z"], key=lambda k: k.encode()) == sorted(["é", "z"])


def test_bare_suffix_key_is_an_object():
    _, order, _ = run([".instruction"])
    assert order == [".instruction"]


def test_backups_of_later_migration_steps_are_not_objects():
    keys = ["a", "a.keymigration-backup", "a.keymigration-backup.2", "a.instruction", "a.instruction.keymigration-backup.3",
            "a.instruction.keymigration-backup.12", "b.2", "b.v.3", "b.instruction.2"]
    hints, order, skipped = run(keys)
    assert order == ["a", "b.2", "b.instruction.2", "b.v.3"]  # a name merely ending in .<n> is still an object
    assert hints["a"] == ({"a.instruction": "etag-a.instruction"}, True)
    assert skipped == Counter({".instruction": 1, ".keymigration-backup": 4})
    from keymigration.migrate.listing import not_an_object

    suffixes = (".instruction", ".keymigration-backup")
    assert [not_an_object(k, suffixes) for k in ("a.instruction", "a.keymigration-backup.7", "a.instruction.2", "a.7")] == [
        ".instruction", ".keymigration-backup", None, None]


def test_start_after_for_lists_the_key_first():
    keys = ["a/0006", "a/0006~", "a/0006\uffff", "a/0007", "a/00070", "a/0008", "a\ue000", "a\ud7ff\U0010ffff\U0010ffff"]
    for key in ("a/0007", "a/00070", "a\ue000", "a/0006~"):
        start = start_after_for(key)
        assert start < key and start.encode("utf-8")  # valid UTF-8: no surrogate
        assert [k for k in sorted(keys) if start < k < key] in ([], ["a\ud7ff\U0010ffff\U0010ffff"])
    assert start_after_for("a" * 1023 + "b") == "a" * 1024  # no room for U+10FFFF within 1,024 bytes


class EtagListing(FakeListing):
    def __init__(self, etags):
        super().__init__(etags)
        self.etags = etags

    def list_objects_v2(self, *args, **kwargs):
        response = super().list_objects_v2(*args, **kwargs)
        for item in response["Contents"]:
            item["ETag"] = self.etags[item["Key"]]
        return response


def test_changed_keys_from_one_relisting():
    etags = {f"p/{i:04d}": f'"{i}"' for i in range(5000)}
    etags.update({f"p/{i:04d}.instruction": '"f"' for i in range(5000)})
    listing = EtagListing(etags)
    expected = {f"p/{i:04d}": f'"{i}"' for i in range(2000, 2400)}
    expected["p/2100"] = '"old"'  # replaced since it was read
    expected["p/2200.gone"] = '"x"'  # deleted since
    assert changed_keys(listing, "b", "p/", expected) == {"p/2100", "p/2200.gone"}
    assert listing.requests == 1  # 800 keys: one page, from just below the first
    assert changed_keys(listing, "b", "p/", {}) == set()


def test_a_small_batch_is_relisted_with_a_small_page():
    """The worker confirms what finished in the last 2 s: often a few dozen objects. S3 would
    send (and the client parse) a full page of 1,000 keys for them, most past the batch's end;
    the first page is sized to the batch, and a range holding more keys than that takes pages
    of 1,000 after it (one request more at most, and never a wrong answer)."""
    etags = {f"p/{i:04d}": f'"{i}"' for i in range(5000)}
    etags.update({f"p/{i:04d}.instruction": '"f"' for i in range(5000)})
    listing = EtagListing(etags)
    batch = {f"p/{i:04d}": f'"{i}"' for i in range(3000, 3020)}
    batch["p/3010"] = '"old"'
    assert changed_keys(listing, "b", "p/", batch) == {"p/3010"}
    assert (listing.requests, listing.listed) == (1, 160)  # 40 of them needed; a page of 1,000 before
    spread = {f"p/{i:04d}": f'"{i}"' for i in range(1000, 5000, 50)}  # 80 objects over 8,000 keys
    spread["p/4950"] = '"old"'
    assert changed_keys(listing, "b", "p/", spread) == {"p/4950"}
    assert listing.requests == 1 + 9  # a page of 340 keys, then of 1,000 until past the last: 8 with 1,000 only
