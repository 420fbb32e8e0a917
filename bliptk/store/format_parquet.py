"""Parquet: a Ray job's shards. Every shard has one flat Arrow schema, made from
[`Record`][bliptk.store.records.Record]'s (nested fields as JSON text), so that shards of any content
read back alike; [`arrow_table()`][bliptk.store.format_parquet.arrow_table] makes the tables a job's
actors return, which Ray writes as Parquet or JSONL shards."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

from ..core.errors import first_line
from ..core.optional import optional
from .records import Record

__all__ = ["CODEC", "arrow_table"]

logger = logging.getLogger(__name__)


def _arrow_type(pa, name: str):
    if name.startswith("list<"):
        return pa.list_(_arrow_type(pa, name[5:-1]))
    return {"string": pa.string(), "json": pa.string(), "bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64()}[name]


def arrow_table(records: list[dict]):
    """Records as an Arrow table of the shards' one schema."""
    pa = optional("pyarrow")
    columns = fields(Record)
    schema = pa.schema([(column.name, _arrow_type(pa, column.metadata["arrow"])) for column in columns])
    json_columns = [column.name for column in columns if column.metadata["arrow"] == "json"]
    rows = [
        {**record, **{name: json.dumps(record[name], sort_keys=True) if record[name] is not None else "" for name in json_columns}}
        for record in records
    ]
    return pa.Table.from_pylist(rows, schema=schema)


class ParquetCodec:
    """Shards only: a records file is never Parquet."""

    def header(self) -> bytes:
        raise NotImplementedError("Parquet is a shard's format, not a records file's")

    def encode(self, record: dict) -> bytes:
        raise NotImplementedError("Parquet is a shard's format, not a records file's")

    def decode(self, data: bytes, source: Path) -> list[dict]:
        raise NotImplementedError("Parquet is a shard's format, not a records file's")

    def decode_shard(self, shard: Path) -> list[dict]:
        pa = optional("pyarrow")
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(shard)
        except (OSError, pa.ArrowException) as error:
            logger.warning("%s: skipping an unreadable shard (%s)", shard, first_line(error))
            return []
        return [Record.from_row(row) for row in table.to_pylist()]


CODEC = ParquetCodec()
