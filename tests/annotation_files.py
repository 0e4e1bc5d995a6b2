"""Helpers for adapter tests: malformed copies of native annotation files."""
from __future__ import annotations

import json
from pathlib import Path


def broken_copy(source: Path, tmp_path: Path, edit) -> Path:
    """A copy of an annotation file, under the same name, with `edit` applied to its JSON."""
    data = json.loads(source.read_text())
    edit(data)
    target = tmp_path / source.name
    target.write_text(json.dumps(data))
    return target
