"""JSONL: a records file of one JSON object per line (``.jsonl``), and a Ray job's JSONL shards,
whose nested fields are JSON text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core.errors import InputError, first_line
from .records import OPTIONAL_FIELDS, Record

__all__ = ["CODEC"]

logger = logging.getLogger(__name__)

# How every JSONL record of bliptk's starts: a torn last line starts so too (or with part of it).
_RECORD_START = b'{"path": '


class JsonlCodec:
    """One record per line, nested fields as JSON; an optional field (``runtime`` for torch,
    ``entropy`` without scores) left out when None."""

    def header(self) -> bytes:
        return b""

    def encode(self, record: dict) -> bytes:
        line = {name: value for name, value in record.items() if name not in OPTIONAL_FIELDS or value is not None}
        try:
            return (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a path with bytes that are no UTF-8: JSON escapes carry them
            return (json.dumps(line) + "\n").encode("ascii")

    def decode(self, data: bytes, source: Path) -> list[dict]:
        lines = data.split(b"\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(Record.from_row(json.loads(line.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, ValueError) as problem:
                if number < len(lines) or not _RECORD_START.startswith(line[: len(_RECORD_START)]):
                    raise InputError(source, f"line {number} is not a bliptk record ({first_line(problem)})") from None
                logger.warning("%s: dropping a torn last line (a run stopped while writing it)", source)
        return records

    def decode_shard(self, shard: Path) -> list[dict]:
        records = []
        for line in shard.read_bytes().split(b"\n"):
            if line.strip():
                try:
                    records.append(Record.from_row(json.loads(line.decode("utf-8"))))
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
                    logger.warning("%s: dropping a torn line", shard)
        return records


CODEC = JsonlCodec()
