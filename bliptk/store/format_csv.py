"""CSV: a records file with a header row, one record per row, nested fields as JSON text. CSV has
no null: a text field's None is an empty cell, a nested field's ``null``, an optional field's
(``runtime``, ``entropy``) an empty cell."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
from dataclasses import fields
from pathlib import Path

from ..core.errors import InputError, first_line
from .records import OPTIONAL_FIELDS, RECORD_FIELDS, Record

__all__ = ["CODEC"]

logger = logging.getLogger(__name__)

_NESTED = {column.name for column in fields(Record) if column.metadata["nested"]}
# Files written before an optional column existed lack it (bliptk 0.2's the runtime: they read as
# torch's): every header without some of the optional columns reads.
_HEADERS = tuple(
    tuple(name for name in RECORD_FIELDS if name not in left_out)
    for count in range(len(OPTIONAL_FIELDS) + 1)
    for left_out in itertools.combinations(OPTIONAL_FIELDS, count)
)


def _cell(name: str, value) -> str:
    """A field's cell: a nested field's JSON (``null`` for None, so that a row cut short in it
    is no record), but an optional field's None empty, as the field's absence; text as it is."""
    if value is None and (name in OPTIONAL_FIELDS or name not in _NESTED):
        return ""
    return json.dumps(value) if name in _NESTED else value


class CsvCodec:
    def header(self) -> bytes:
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerow(RECORD_FIELDS)
        return buffer.getvalue().encode("utf-8")

    def encode(self, record: dict) -> bytes:
        buffer = io.StringIO(newline="")
        row = [_cell(name, record.get(name)) for name in RECORD_FIELDS]
        csv.writer(buffer).writerow(row)
        return buffer.getvalue().encode("utf-8", errors="surrogateescape")

    def decode(self, data: bytes, source: Path) -> list[dict]:
        text = data.decode("utf-8", errors="surrogateescape")  # paths the OS allows, undecodable bytes included
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if not rows:
            return []
        header = tuple(rows[0])
        if header not in _HEADERS:
            raise InputError(source, f"the header is not a bliptk records file's ({', '.join(RECORD_FIELDS)})")
        records = []
        for number, row in enumerate(rows[1:], start=2):
            try:
                if len(row) != len(header):
                    raise ValueError(f"{len(row)} fields")
                cells = dict(zip(header, row, strict=True))
                record = Record.from_row({name: value or None if name not in _NESTED else value for name, value in cells.items()})
                # A failed input's caption is None, a captioned one's a string ("" too).
                record["caption"] = None if record["error"] else cells["caption"]
                records.append(record)
            except (ValueError, TypeError, KeyError) as problem:
                if number < len(rows):
                    raise InputError(source, f"row {number} is not a bliptk record ({first_line(problem)})") from None
                logger.warning("%s: dropping a torn last row (a run stopped while writing it)", source)
        return records

    def decode_shard(self, shard: Path) -> list[dict]:
        raise NotImplementedError("CSV is a records file's format, not a shard's")


CODEC = CsvCodec()
