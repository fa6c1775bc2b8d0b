"""Key-range shards: the planner's ranges cover a prefix exactly once, and a range's listing
yields exactly its objects with complete hints across the boundary."""
from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from keymigration.migrate.checkpoint import Checkpoint
from keymigration.migrate.listing import Listed, with_hints
from keymigration.migrate.shards import MAX_CHAR, plan_shards
from keymigration.migrate.sources import KeyRange, ListingSource
from tests.support.fake_listing import FakeListing

FILES = (".instruction", ".keymigration-backup")
AWKWARD = ["a", "a b", "a+b", "a%2Bb", "a-1", "a.instruction", "a/", "a/b", "é", "中文", "😀", "\U0010fffd", "z~"]


def owners(plan, key):
    return [i for i, shard in enumerate(plan.shards) if key in shard.key_range]


def objects_of(keys, prefix=""):
    return sorted(k for k in set(keys) if k.startswith(prefix) and not k.endswith(FILES))


def assert_exact_cover(plan, keys, prefix=""):
    ranges = [s.key_range for s in plan.shards]
    assert ranges[0].start_after is None and ranges[-1].end_key is None
    for before, after in zip(ranges, ranges[1:]):
        assert before.end_key == after.start_after is not None  # adjacent, no gap, no overlap
    for key in set(keys) | {"", MAX_CHAR, prefix, prefix + MAX_CHAR}:
        assert len(owners(plan, key)) == 1, key
    for shard in plan.shards:  # boundaries are objects, never instruction files
        if shard.key_range.end_key is not None:
            assert not shard.key_range.end_key.endswith(FILES)


def random_keys(rng, n):
    alphabet = "ab/-_.+% é中😀0123456789"
    keys = set()
    while len(keys) < n:
        key = "p/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        keys.add(key)
        if rng.random() < 0.3:
            keys.add(key + ".instruction")
    return sorted(keys)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shards", [1, 2, 3, 7, 40])
def test_sampled_plan_covers_every_key_exactly_once(seed, shards):
    rng = random.Random(seed)
    keys = random_keys(rng, 3000) + ["o/outside", "q"]  # other prefixes are not counted
    s3 = FakeListing(keys)
    plan = plan_shards(s3, "b", "p/", shards=shards, not_objects=FILES, page_size=17, seed=seed, max_requests=60)
    assert not plan.exact
    assert_exact_cover(plan, keys, "p/")
    assert len(plan.shards) <= shards
    assert plan.requests == s3.requests < 70 < len(keys) / 17  # fewer requests than a full listing
    objects = objects_of(keys, "p/")
    counts = [sum(1 for k in objects if k in s.key_range) for s in plan.shards]
    assert sum(counts) == len(objects)
    if shards > 1:
        assert len(plan.shards) > 1


def test_exact_plan_for_one_page_splits_objects_evenly():
    keys = [f"p/{c}" for c in AWKWARD] + [f"p/{c}.instruction" for c in AWKWARD[:5]]
    objects = objects_of(keys, "p/")
    plan = plan_shards(FakeListing(keys), "b", "p/", shards=4, not_objects=FILES)
    assert plan.exact and plan.requests == 1 and plan.estimated_objects == len(objects)
    assert_exact_cover(plan, keys, "p/")
    counts = [sum(1 for k in objects if k in s.key_range) for s in plan.shards]
    assert counts == [s.estimated_objects for s in plan.shards]
    assert max(counts) - min(counts) <= 1 and len(counts) == 4


def test_empty_prefix_is_one_open_shard():
    plan = plan_shards(FakeListing(["other/x"]), "b", "p/", shards=8)
    assert [s.as_dict() for s in plan.shards] == [{"start_after": None, "end_key": None, "estimated_objects": 0}]


def test_one_key():
    plan = plan_shards(FakeListing(["p/only", "p/only.instruction"]), "b", "p/", shards=3, not_objects=FILES)
    assert [s.as_dict() for s in plan.shards] == [{"start_after": None, "end_key": None, "estimated_objects": 1}]


def test_more_shards_than_objects_gives_one_object_per_shard():
    keys = ["p/a", "p/b", "p/b.instruction", "p/c"]
    plan = plan_shards(FakeListing(keys), "b", "p/", shards=10, not_objects=FILES)
    assert [s.as_dict() for s in plan.shards] == [
        {"start_after": None, "end_key": "p/a", "estimated_objects": 1},
        {"start_after": "p/a", "end_key": "p/b", "estimated_objects": 1},
        {"start_after": "p/b", "end_key": None, "estimated_objects": 1},
    ]


def test_objects_per_shard():
    keys = [f"p/k{i:04d}" for i in range(500)]
    plan = plan_shards(FakeListing(keys), "b", "p/", objects_per_shard=100)
    assert len(plan.shards) == 5 and {s.estimated_objects for s in plan.shards} == {100}
    sampled = plan_shards(FakeListing(keys), "b", "p/", objects_per_shard=100, page_size=20)
    assert 3 <= len(sampled.shards) <= 8
    assert_exact_cover(sampled, keys, "p/")


def test_a_prefix_cheaper_to_list_than_to_sample_is_listed_and_planned_exactly():
    keys = random_keys(random.Random(9), 3000)
    s3 = FakeListing(keys)
    plan = plan_shards(s3, "b", "p/", shards=40, not_objects=FILES, page_size=25)
    assert plan.exact and plan.estimated_objects == len(objects_of(keys, "p/"))
    assert plan.requests < 2 * len(keys) / 25
    assert_exact_cover(plan, keys, "p/")
    counts = [sum(1 for k in objects_of(keys) if k in s.key_range) for s in plan.shards]
    assert len(counts) == 40 and max(counts) - min(counts) <= 1


def test_sampling_balances_a_uniform_prefix():
    keys = [f"p/obj-{i:06d}" for i in range(20000)]
    plan = plan_shards(FakeListing(keys), "b", "p/", shards=8, page_size=50)
    counts = [sum(1 for k in keys if k in s.key_range) for s in plan.shards]
    assert len(counts) == 8 and max(counts) < 1.5 * 2500 and min(counts) > 0.5 * 2500, counts
    assert abs(plan.estimated_objects - 20000) < 0.25 * 20000


def test_invalid_requests():
    with pytest.raises(ValueError):
        plan_shards(FakeListing([]), "b", "", shards=2, objects_per_shard=3)
    with pytest.raises(ValueError):
        plan_shards(FakeListing([]), "b", "", shards=0)
    with pytest.raises(ValueError):
        KeyRange("b", "a")


# -- a range's listing --------------------------------------------------------------------------


def listed(keys):
    return [Listed(k, f"etag-{k}", 1) for k in sorted(keys)]


def test_range_end_takes_the_instruction_file_past_it_but_no_object():
    keys = ["a", "a-1", "a.instruction", "a.instruction.keymigration-backup", "b", "b.instruction"]
    aux = Counter()
    out = list(with_hints(listed(keys), (".instruction",), (".keymigration-backup",), window=10, skipped=aux, end_key="a"))
    assert [(o.key, dict(o.hint.files), o.hint.complete) for o in out] == [("a", {"a.instruction": "etag-a.instruction"}, True)]
    assert aux == Counter()  # the files past the end belong to the next range's count


def test_range_end_overrun_is_bounded_by_the_window():
    keys = ["a"] + [f"a-{i:03d}" for i in range(50)] + ["a.instruction"]
    out = list(with_hints(listed(keys), (".instruction",), window=5, end_key="a"))
    assert [(o.key, o.hint.complete) for o in out] == [("a", False)]  # gave up: the worker asks S3


def test_two_ranges_list_every_object_once_with_complete_hints():
    keys = ["k", "k+1", "k.instruction", "k0", "k0.instruction", "é", "é.instruction", "😀", "😀.instruction"]
    s3 = FakeListing(keys)
    seen = []
    for key_range in (KeyRange(None, "k"), KeyRange("k", "é"), KeyRange("é", None)):
        source = ListingSource(s3, "b", "", (".instruction",), key_range=key_range)
        items = list(source.items(Checkpoint("b", "", ".instruction", "t"), Counter()))
        seen += items
        assert all(item.key in key_range for item in items)
    assert sorted(i.key for i in seen) == objects_of(keys)
    hints = {i.key: (dict(i.hint.files), i.hint.complete) for i in seen}
    assert hints["k"] == ({"k.instruction": '"e"'}, True)  # its file lies in the next range
    assert hints["é"] == ({"é.instruction": '"e"'}, True) and hints["k+1"] == ({}, True)


def test_range_source_resumes_after_the_checkpoint_and_counts_its_range():
    keys = [f"k{i}" for i in range(10)]
    source = ListingSource(FakeListing(keys), "b", "", (".instruction",), key_range=KeyRange("k2", "k7"))
    checkpoint = Checkpoint("b", "", ".instruction", "t", after="k4")
    assert [i.key for i in source.items(checkpoint, Counter())] == ["k5", "k6", "k7"]
    assert source.count(threading.Event()) == 5


# -- checkpoints of shards ----------------------------------------------------------------------


def test_a_prefix_checkpoint_keeps_version_1_and_a_shard_writes_version_2():
    import json

    from keymigration.errors import CheckpointError

    plain = json.loads(Checkpoint("b", "p/", ".instruction", "t").to_json())
    assert plain["version"] == 1 and "end_key" not in plain and "position" not in plain
    shard = Checkpoint("b", "p/", ".instruction", "t", start_after="p/a", end_key="p/m", after="p/c")
    data = json.loads(shard.to_json())
    assert data["version"] == 2 and data["start_after"] == "p/a" and data["end_key"] == "p/m"
    again = Checkpoint.from_json(shard.to_json())
    again.check_matches("b", "p/", ".instruction", "t", "instruction-file", start_after="p/a", end_key="p/m")
    with pytest.raises(CheckpointError, match="end key 'p/m' != 'p/z'"):
        again.check_matches("b", "p/", ".instruction", "t", "instruction-file", start_after="p/a", end_key="p/z")
    with pytest.raises(CheckpointError, match="start after"):
        Checkpoint.from_json(json.dumps(plain)).check_matches("b", "p/", ".instruction", "t", "instruction-file",
                                                              start_after="p/a")
    with pytest.raises(CheckpointError, match="inventory md5"):
        Checkpoint("b", "", ".i", "t", inventory="s3://x/m.json", inventory_md5="1").check_matches(
            "b", "", ".i", "t", "instruction-file", inventory="s3://x/m.json", inventory_md5="2")


def test_a_listing_error_is_a_clear_setup_error():
    from botocore.exceptions import ClientError

    from keymigration.errors import SetupError

    class Denied:
        def list_objects_v2(self, **_):
            raise ClientError({"Error": {"Code": "NoSuchBucket"}}, "ListObjectsV2")

    with pytest.raises(SetupError, match="cannot list s3://b/p/: s3-NoSuchBucket"):
        plan_shards(Denied(), "b", "p/", shards=2)
