"""Watermark keys: known to the process that runs the flow, never written to manifests or MLflow.

A stage's keyed config holds the key's fingerprint (sha256 of the key, 16 hex digits), which is
enough for the cache key (another key gives another fingerprint) and for telling runs apart in the
MLflow UI. The key itself is registered in this process by the flow from the run's config (or from
``ENTROFLOW_WATERMARK_KEYS``, comma-separated, on a worker that does not read the config) and looked
up by fingerprint when a stage embeds or detects. Why: z-scores together with the key let anyone
spoof or scrub the watermark, so the key must not travel with the results (vLLM's docs give the
same warning).
"""
from __future__ import annotations

import hashlib
import os

ENV = "ENTROFLOW_WATERMARK_KEYS"
_KEYS: dict[str, int] = {}


def fingerprint(key: int) -> str:
    return "sha256:" + hashlib.sha256(f"entroflow-watermark-key:{int(key)}".encode()).hexdigest()[:16]


def register(key: int) -> str:
    fp = fingerprint(key)
    _KEYS[fp] = int(key)
    return fp


def lookup(fp: str) -> int:
    if fp not in _KEYS:
        for item in filter(None, os.environ.get(ENV, "").split(",")):
            register(int(item))
    if fp not in _KEYS:
        raise KeyError(f"watermark key {fp} is not known to this process: run the flow with the config that "
                       f"holds the key, or set {ENV}")
    return _KEYS[fp]
