"""Key-range shards of a prefix, planned by sampling the key space instead of listing it.

Coverage never depends on the sampling: boundaries ``b1 < b2 < ... < bk`` give the ranges
``(None, b1], (b1, b2], ..., (bk, None]``, which hold every key exactly once whatever the
boundaries are. Sampling only decides how even the shards are.

How the key space is sampled. S3 can answer two questions cheaply: "the next 1,000 keys after
K under prefix P" (``ListObjectsV2`` with ``StartAfter``) and, by jumping with ``StartAfter =
P + c + U+10FFFF``, "the first key under P that does not start with ``P + c``". The planner
builds a character trie of the prefix from such probes:

* a *node* is a key prefix with more keys than one page; *expanding* it finds its children
  ``node + c`` one page at a time: children that fit in the page are counted exactly (a *run*),
  a child that fills the page is a new node (one request each, the jump that passes it);
* a node whose first page shares a longer common prefix is first probed with one jump: if no
  key passes it, the node is renamed to that longer prefix (a path of single children costs one
  request, not one per character; this is what a delimiter listing would tell for ``/``, for any
  character);
* every expansion goes on with a random descent to a leaf (Knuth's tree-size estimator); a
  node not expanded is scaled from its expanded siblings by how far its first page reaches
  into its keys compared with theirs (the geometric mean over them);
* for half the budget, expansion goes to the largest estimated node first (a node whose first
  page shares a longer prefix than its siblings', a sign of a denser node, goes earlier), until
  every unexpanded node is small against a shard (a quarter of one); then the nodes a boundary
  falls in are expanded until each is small, or the budget is spent.

Boundaries are then put at the estimated quantiles, on object keys the probes saw. Keys that
are instruction files or backups (by name, the same rule as the worker's) are not counted: a
shard owns objects. A prefix of one page, or cheap to list by a margin, is planned exactly.
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from keymigration.aws.s3 import s3_call
from keymigration.errors import ConfigurationError, S3Error
from keymigration.migrate.listing import not_an_object
from keymigration.migrate.sources import KeyRange

MAX_CHAR = "\U0010ffff"  # sorts after every other code point, so after every other UTF-8 sequence
SAMPLES_PER_RUN = 64  # object keys kept per exactly counted run (boundaries land on them)
EXPLORE_SHARE = 2  # the best-first phase may spend 1/EXPLORE_SHARE of the budget, the rest refines boundaries
FULL_LISTING_PAGES = 1000  # a prefix estimated under this many pages (and half the budget) is listed
DEEPER = 4  # a first page sharing one more character than a sibling's: guessed this much larger
GRANULARITY = 4  # expand until every unexpanded node is under 1/GRANULARITY of a shard


@dataclass
class Shard:
    key_range: KeyRange
    estimated_objects: int

    def as_dict(self) -> dict:
        return {**self.key_range.as_dict(), "estimated_objects": self.estimated_objects}


@dataclass
class ShardPlan:
    shards: list[Shard]
    estimated_objects: int
    exact: bool  # the whole prefix was listed (it fits in one page)
    requests: int  # ListObjectsV2 requests the planning made


@dataclass
class _Run:
    """Consecutive keys counted exactly: ``count`` objects, some of them kept as samples."""

    count: int
    samples: list[tuple[int, str]]  # (rank within the run, object key)

    @classmethod
    def of(cls, objects: Sequence[str]) -> "_Run":
        n = len(objects)
        if n <= SAMPLES_PER_RUN:
            return cls(n, list(enumerate(objects)))
        picks = sorted({round(i * (n - 1) / (SAMPLES_PER_RUN - 1)) for i in range(SAMPLES_PER_RUN)})
        return cls(n, [(i, objects[i]) for i in picks])

    @property
    def weight(self) -> float:
        return float(self.count)


@dataclass(eq=False)
class _Node:
    """Every key starting with ``prefix``: more than one page of them."""

    prefix: str
    first: list[str]  # the first page's keys (objects and files)
    parent: "_Node | None" = None
    origin: str = ""  # the prefix it was found as (a sibling's + one character), before renaming
    parts: list["_Run | _Node"] | None = None  # children in key order, once expanded
    estimate: float = 0.0  # expanded: runs + children; else set from its siblings

    @property
    def expanded(self) -> bool:
        return self.parts is not None

    @property
    def weight(self) -> float:
        return self.estimate

    def open_children(self) -> list["_Node"]:
        return [p for p in self.parts or () if isinstance(p, _Node)]


class _Prober:
    """``ListObjectsV2`` pages, counted."""

    def __init__(self, s3, bucket: str, page_size: int):
        self.s3 = s3
        self.bucket = bucket
        self.page_size = page_size
        self.requests = 0

    def page(self, prefix: str, start_after: str | None = None) -> tuple[list[str], bool]:
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.page_size}
        if start_after is not None:
            kwargs["StartAfter"] = start_after
        self.requests += 1
        try:
            response = s3_call("LIST", prefix, lambda: self.s3.list_objects_v2(**kwargs))
        except S3Error as error:
            raise ConfigurationError(f"cannot list s3://{self.bucket}/{prefix}: {error.reason}") from None
        assert response is not None
        return [item["Key"] for item in response.get("Contents", ())], bool(response.get("IsTruncated"))


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


class _Planner:
    def __init__(self, prober: _Prober, not_objects: Sequence[str], rng: random.Random):
        self.prober = prober
        self.not_objects = sorted(set(not_objects), key=len, reverse=True)
        self.rng = rng

    def objects(self, keys: Iterable[str]) -> list[str]:
        return [k for k in keys if not_an_object(k, self.not_objects) is None]

    # -- expansion ------------------------------------------------------------------------------

    def _compress(self, node: _Node) -> None:
        """Rename ``node`` to the longer prefix its first page shares, when one jump past it
        finds no key: a path of single children then costs one request, not one per character
        (what a delimiter listing tells for ``/``, here for any character). Where the jump finds
        keys, the node branches earlier and its expansion walks the path."""
        shared = _common_prefix(node.first[0], node.first[-1])
        if len(shared) - len(node.prefix) < 3:
            return  # a walk costs one request per character: no more than the probe
        beyond, _ = self.prober.page(node.prefix, shared + MAX_CHAR)
        if not beyond:
            node.prefix = shared

    def _child(self, node: _Node, char: str, page: list[str], page_is_child: bool) -> _Run | _Node:
        """The child ``node.prefix + char``, whose keys start ``page``."""
        prefix = node.prefix + char
        if page_is_child:
            first, truncated = page, True
        else:
            first, truncated = self.prober.page(prefix)
        if not truncated:
            return _Run.of(self.objects(first))
        return _Node(prefix, first, parent=node, origin=prefix)

    def expand(self, node: _Node) -> None:
        """Find the node's children: runs counted exactly, and open child nodes."""
        self._compress(node)
        p = node.prefix
        parts: list[_Run | _Node] = []
        page, truncated = node.first, True
        while True:
            groups: list[tuple[str, list[str]]] = []
            for key in page:
                char = key[len(p) : len(p) + 1]  # "" for the key equal to the prefix
                if groups and groups[-1][0] == char:
                    groups[-1][1].append(key)
                else:
                    groups.append((char, [key]))
            complete = groups if not truncated else groups[:-1]
            objects = [k for _, keys in complete for k in self.objects(keys)]
            if objects:
                parts.append(_Run.of(objects))
            if not truncated:
                break
            char, keys = groups[-1]
            parts.append(self._child(node, char, page, page_is_child=len(groups) == 1))
            page, truncated = self.prober.page(p, p + char + MAX_CHAR)
            if not page:
                break
        node.parts = parts

    # -- estimates --------------------------------------------------------------------------------

    def refresh(self, node: _Node | None) -> None:
        """Recompute estimates from ``node`` up to the root."""
        while node is not None:
            children = node.open_children()
            known = [c for c in children if c.expanded]
            for child in children:
                if not child.expanded:
                    child.estimate = self.guess(child, known)
            node.estimate = sum(part.weight for part in node.parts or ())
            node = node.parent

    def guess(self, node: _Node, siblings: list[_Node]) -> float:
        """A node not expanded yet, from its expanded siblings: if a sibling's first page of
        objects reaches as far into its keys as this node's first page does into this node's
        (compared at the same suffix), they are taken as large; a first page that reaches less
        far means a denser, larger node. The geometric mean over the siblings expanded."""
        objects = self.objects(node.first)
        floor = float(len(objects))
        if not siblings or not objects:
            return max(floor, float(self.prober.page_size))
        suffix = objects[-1][len(node.origin) :]
        logs = []
        for sibling in siblings:
            reach = _rank(sibling, sibling.origin + suffix, self)
            denser = len(objects) / max(1.0, reach) if reach < len(objects) else 1.0
            logs.append(math.log(max(1.0, sibling.estimate * denser)))
        return max(floor, math.exp(sum(logs) / len(logs)))

    def priority(self, node: _Node) -> float:
        """Which node to expand next: the largest estimate, raised for a node whose first page
        shares a longer prefix than its expanded siblings' (a sign of a denser node the guess
        may have missed: DEEPER per character). Only the order of expansion uses this; a node
        raised wrongly costs its expansion, a node missed would never be corrected."""
        siblings = [s for s in (node.parent.open_children() if node.parent else []) if s.expanded]
        if not siblings:
            return node.estimate
        depth = _shared_depth(self.objects(node.first), node.origin)
        deeper = depth - min(_shared_depth(self.objects(s.first), s.origin) for s in siblings)
        return node.estimate * DEEPER ** min(max(0, deeper), 12)

    def descend(self, node: _Node) -> list[_Node]:
        """Expand ``node`` and one random open child below it, down to a node without any (a
        Knuth descent); returns the new unexpanded nodes."""
        fresh: list[_Node] = []
        while True:
            self.expand(node)
            children = node.open_children()
            fresh.extend(children)
            if not children:
                break
            node = self.rng.choice(children)
        self.refresh(node)
        return [n for n in fresh if not n.expanded]


def _leaves(root: _Node) -> list[_Run | _Node]:
    """Runs and unexpanded nodes in key order."""
    out: list[_Run | _Node] = []
    stack: list[_Run | _Node] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, _Node) and item.expanded:
            stack.extend(reversed(item.parts or ()))
        else:
            out.append(item)
    return out


def _shared_depth(objects: list[str], origin: str) -> int:
    """How many characters past ``origin`` a first page's objects all share."""
    return len(_common_prefix(objects[0], objects[-1])) - len(origin) if objects else 0


def _rank(node: _Node, key: str, planner: "_Planner") -> float:
    """About how many objects of ``node`` are at most ``key``."""
    total = 0.0
    while node.parts is not None:
        inside = None
        for part in node.parts:
            if isinstance(part, _Run):
                below = _run_rank(part, key)
                total += below
                if below < part.count:
                    return total
            elif key < part.prefix:
                return total
            elif key.startswith(part.prefix):
                inside = part
                break
            else:
                total += part.estimate
        if inside is None:
            return total
        node = inside
    objects = planner.objects(node.first)  # only its first page is known
    below = sum(1 for k in objects if k <= key)
    return total + (below if below < len(objects) else (below + node.estimate) / 2)


def _run_rank(run: _Run, key: str) -> int:
    """About how many of the run's objects are at most ``key`` (from its samples)."""
    if not run.samples or run.samples[0][1] > key:
        return 0
    if run.samples[-1][1] <= key:
        return run.count
    return max(rank + 1 for rank, k in run.samples if k <= key)


def _samples(item: _Run | _Node, planner: _Planner) -> list[tuple[int, str]]:
    if isinstance(item, _Run):
        return item.samples
    return list(enumerate(planner.objects(item.first)))


def _boundaries(leaves: list[_Run | _Node], total: float, shards: int, planner: _Planner) -> list[tuple[str, float]]:
    """(boundary key, estimated rank) at the quantiles ``i * total / shards``. A boundary key
    and every key before it go to the earlier shard."""
    out: list[tuple[str, float]] = []
    targets = [i * total / shards for i in range(1, shards)]
    samples = [_samples(item, planner) for item in leaves]
    cum = 0.0
    t = 0
    for index, item in enumerate(leaves):
        weight = item.weight
        while t < len(targets) and targets[t] < cum + weight:
            offset = targets[t] - cum
            t += 1
            # The nearest key seen: a sample inside the item, or the next item's first key
            # (an unexpanded node is only known by its first page).
            candidates = [(abs(rank + 1 - offset), key, cum + rank + 1) for rank, key in samples[index]]
            following = next((s[0][1] for s in samples[index + 1 :] if s), None)
            if following is not None:
                candidates.append((abs(weight + 1 - offset), following, cum + weight + 1))
            if candidates:
                _, key, rank = min(candidates)
                out.append((key, rank))
        cum += weight
    return out


def plan_shards(
    s3,
    bucket: str,
    prefix: str,
    *,
    shards: int | None = None,
    objects_per_shard: int | None = None,
    not_objects: Sequence[str] = (),
    page_size: int = 1000,
    max_requests: int | None = None,
    seed: int = 0,
) -> ShardPlan:
    """Plan key ranges of ``prefix`` (give ``shards`` or ``objects_per_shard``)."""
    if (shards is None) == (objects_per_shard is None):
        raise ValueError("give exactly one of shards and objects_per_shard")
    if (shards or objects_per_shard or 0) < 1 or page_size < 2:
        raise ValueError("shards, objects_per_shard must be at least 1 and page_size at least 2")
    prober = _Prober(s3, bucket, page_size)
    planner = _Planner(prober, not_objects, random.Random(seed))
    first, truncated = prober.page(prefix)
    if not truncated:
        return _exact_plan(planner.objects(first), shards, objects_per_shard, prober.requests)
    root = _Node(prefix, first, origin=prefix)

    def wanted() -> int:
        return shards or max(1, math.ceil(root.estimate / (objects_per_shard or 1)))

    def budget() -> int:
        return max_requests if max_requests is not None else default_budget(wanted())

    fresh = planner.descend(root)
    listed = _list_if_cheap(planner, prefix, root.estimate * len(first) / max(1, len(planner.objects(first))), budget())
    if listed is not None:
        return _exact_plan(listed, shards, objects_per_shard, prober.requests)
    _explore(planner, root, fresh, wanted, lambda: budget() // EXPLORE_SHARE)
    _refine(planner, root, wanted, budget)
    total = root.estimate
    bounds = _dedupe(_boundaries(_leaves(root), total, wanted(), planner))
    return ShardPlan(_shards(bounds, total), round(total), False, prober.requests)


def _list_if_cheap(planner: _Planner, prefix: str, keys: float, budget: int) -> list[str] | None:
    """A prefix estimated to list in at most a quarter of the budget (and FULL_LISTING_PAGES
    pages) is listed whole and planned exactly. If the listing runs to twice the estimate, the
    estimate was low: it stops, and the sampling goes on with the rest of the budget."""
    prober = planner.prober
    pages = max(1.0, keys / prober.page_size)
    if pages > min(budget / 4, FULL_LISTING_PAGES):
        return None
    stop = prober.requests + 2 * pages
    objects: list[str] = []
    after: str | None = None
    while prober.requests < stop:
        page, truncated = prober.page(prefix, after)
        objects += planner.objects(page)
        if not truncated:
            return objects
        after = page[-1]
    return None


def _explore(
    planner: _Planner, root: _Node, fresh: list[_Node], wanted: Callable[[], int], budget: Callable[[], int]
) -> None:
    """Best first: expand the largest estimated node until every node left unexpanded is small
    against a shard, or half the budget is spent."""
    heap: list[tuple[float, float, _Node]] = []

    def push(nodes: Iterable[_Node]) -> None:
        for node in nodes:
            heapq.heappush(heap, (-planner.priority(node), planner.rng.random(), node))

    push(fresh)
    while heap and planner.prober.requests < budget():
        queued, _, node = heapq.heappop(heap)
        if node.expanded:
            continue
        if -queued != planner.priority(node):
            push([node])  # its estimate moved since it was queued
            continue
        if planner.priority(node) * GRANULARITY <= root.estimate / wanted():
            break
        push(planner.descend(node))


def _refine(planner: _Planner, root: _Node, wanted: Callable[[], int], budget: Callable[[], int]) -> None:
    """Where a boundary falls inside a node still large against a shard, expand that node
    (the largest first), until none is left or the budget is spent."""
    while planner.prober.requests < budget():
        shard = root.estimate / wanted()
        coarse = [node for node in _containing_quantiles(_leaves(root), root.estimate, wanted())
                  if node.estimate * GRANULARITY > shard]
        if not coarse:
            return
        for node in sorted(coarse, key=lambda n: -planner.priority(n)):
            if planner.prober.requests >= budget():
                return
            if not node.expanded:
                planner.descend(node)


def _containing_quantiles(leaves: list[_Run | _Node], total: float, shards: int) -> list[_Node]:
    """The unexpanded nodes a quantile ``i * total / shards`` falls in."""
    found: list[_Node] = []
    targets = [i * total / shards for i in range(1, shards)]
    cum, t = 0.0, 0
    for item in leaves:
        while t < len(targets) and targets[t] < cum + item.weight:
            if isinstance(item, _Node) and (not found or found[-1] is not item):
                found.append(item)
            t += 1
        cum += item.weight
    return found


def default_budget(shards: int) -> int:
    """Requests the planner may make for ``shards`` shards (a full listing of N keys costs
    N / 1,000): about 20 per shard, enough to find each boundary to a few percent of a shard
    on the layouts measured in docs/scale.md."""
    return 200 + 20 * shards


def _dedupe(bounds: list[tuple[str, float]]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for key, rank in bounds:
        if not out or key > out[-1][0]:
            out.append((key, rank))
    return out


def _shards(bounds: list[tuple[str, float]], total: float) -> list[Shard]:
    keys = [None, *(k for k, _ in bounds), None]
    ranks = [0.0, *(r for _, r in bounds), total]
    return [Shard(KeyRange(keys[i], keys[i + 1]), max(0, round(ranks[i + 1] - ranks[i]))) for i in range(len(keys) - 1)]


def _exact_plan(objects: list[str], shards: int | None, per_shard: int | None, requests: int) -> ShardPlan:
    n = len(objects)
    count = shards if shards is not None else math.ceil(n / (per_shard or 1))
    count = max(1, min(count, n))
    ends = [round(i * n / count) for i in range(1, count)]  # objects[:end] go before the boundary
    bounds = _dedupe([(objects[e - 1], float(e)) for e in ends if e > 0])
    return ShardPlan(_shards(bounds, float(n)), n, True, requests)


__all__ = ["Shard", "ShardPlan", "plan_shards"]
