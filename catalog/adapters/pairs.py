"""Loom's own pairs shards (the ingest output) as captioning records."""
from __future__ import annotations

from pipelines.ingest.shards import read_pairs_index


def read_pairs(ingest_dir: str, split: str = "train") -> list[dict]:
    """One captioning record per kept pair, its image referenced by shard and key."""
    index = read_pairs_index(ingest_dir)
    records = []
    for row in index.to_pylist():
        records.append({
            "id": f"pairs:{row['key']}",
            "dataset": f"pairs/{row['source']}",
            "task": "captioning",
            "split": split,
            "lang": row["lang"],
            "image": {"shard": row["shard"], "key": row["key"], "url": row["url"],
                      "width": row["width"], "height": row["height"]},
            "caption": row["caption"],
        })
    return records
