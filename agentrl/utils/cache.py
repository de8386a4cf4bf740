"""The cache key of a trained artefact (the warm start, the reward model): one helper for both."""

from __future__ import annotations

import hashlib
import json


def cache_key(identity: dict) -> str:
    """16 hex digits of the SHA-256 of ``identity`` written as JSON with sorted keys (a value JSON
    cannot write is written as its ``str``): the same settings give the same key in every
    process, on every machine."""
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
