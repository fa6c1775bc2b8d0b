"""Writes an S3 Inventory as S3 does (manifest.json, manifest.checksum, gzip CSV data files
without a header, keys URL-encoded with '+' for a space), for tests and benchmarks."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Iterable, Sequence
from urllib.parse import quote_plus

VERSIONED_SCHEMA = ("Bucket", "Key", "VersionId", "IsLatest", "IsDeleteMarker", "Size", "LastModifiedDate", "ETag")
CURRENT_SCHEMA = ("Bucket", "Key", "Size", "LastModifiedDate", "ETag", "StorageClass")


@dataclass(frozen=True)
class Row:
    key: str
    latest: bool = True
    delete_marker: bool = False
    size: int = 100


def csv_gz(bucket: str, rows: Iterable[Row], schema: Sequence[str]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for n, row in enumerate(rows):
            values = {
                "Bucket": bucket, "Key": quote_plus(row.key, safe=""), "VersionId": f"v{n}",
                "IsLatest": "true" if row.latest else "false", "IsDeleteMarker": "true" if row.delete_marker else "false",
                "Size": "" if row.delete_marker else str(row.size), "LastModifiedDate": "2026-11-01T00:00:00.000Z",
                "ETag": "0" * 32, "StorageClass": "STANDARD",
            }
            writer.writerow([values[c] for c in schema])
        text.flush()
        text.detach()
    return raw.getvalue()


def write_inventory(s3, destination: str, source_bucket: str, files: Sequence[Iterable[Row]],
                    schema: Sequence[str] = VERSIONED_SCHEMA, prefix: str = "inventory") -> str:
    """Put the data files and the manifest in ``destination``; returns the manifest's URL."""
    base = f"{prefix}/{source_bucket}/config"
    entries = []
    for i, rows in enumerate(files):
        body = csv_gz(source_bucket, rows, schema)
        key = f"{base}/data/part-{i:05d}.csv.gz"
        s3.put_object(Bucket=destination, Key=key, Body=body)
        entries.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
    manifest = json.dumps({
        "sourceBucket": source_bucket, "destinationBucket": f"arn:aws:s3:::{destination}", "version": "2016-11-30",
        "creationTimestamp": "1764547200000", "fileFormat": "CSV", "fileSchema": ", ".join(schema), "files": entries,
    }, indent=2).encode()
    stamp = f"{base}/2026-12-01T01-00Z"
    s3.put_object(Bucket=destination, Key=f"{stamp}/manifest.json", Body=manifest)
    s3.put_object(Bucket=destination, Key=f"{stamp}/manifest.checksum", Body=hashlib.md5(manifest).hexdigest().encode())
    return f"s3://{destination}/{stamp}/manifest.json"
