"""Ingest operators: URL lists to filtered, deduplicated, language-mixed pairs shards."""
