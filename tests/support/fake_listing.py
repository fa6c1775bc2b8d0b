"""An in-memory ``ListObjectsV2`` (Prefix, StartAfter, MaxKeys, continuation) over a sorted key
list, in S3's order (UTF-8 bytes, which is Python's code-point order for ``str``). For planner
tests and benchmarks at sizes moto cannot list quickly (moto sorts the bucket on every page)."""
from __future__ import annotations

import bisect


class FakeListing:
    def __init__(self, keys):
        self.keys = sorted(set(keys))
        self.requests = 0
        self.listed = 0  # keys returned, over all requests (what a client parses)

    def list_objects_v2(self, Bucket, Prefix="", MaxKeys=1000, StartAfter=None, ContinuationToken=None):
        self.requests += 1
        lo = bisect.bisect_left(self.keys, Prefix)
        after = ContinuationToken or StartAfter
        if after is not None:
            lo = max(lo, bisect.bisect_right(self.keys, after))
        out = []
        i = lo
        while i < len(self.keys) and len(out) < MaxKeys and self.keys[i].startswith(Prefix):
            out.append(self.keys[i])
            i += 1
        self.listed += len(out)
        truncated = i < len(self.keys) and self.keys[i].startswith(Prefix)
        response = {"Contents": [{"Key": k, "ETag": '"e"', "Size": 1} for k in out], "IsTruncated": truncated}
        if truncated:
            response["NextContinuationToken"] = out[-1]
        return response

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        fake = self

        class Paginator:
            def paginate(self, Bucket, Prefix="", PaginationConfig=None, StartAfter=None):
                size = (PaginationConfig or {}).get("PageSize", 1000)
                token = None
                while True:
                    page = fake.list_objects_v2(Bucket, Prefix, size, StartAfter, token)
                    yield page
                    if not page["IsTruncated"]:
                        return
                    token = page["NextContinuationToken"]

        return Paginator()
