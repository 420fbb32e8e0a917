"""The formats records are written in, registered here by one row each: a records file (JSONL,
CSV: ``bliptk caption --out``) or a Ray job's shards (JSONL, Parquet). Each format is a module with
a ``CODEC`` ([`Codec`][bliptk.store.formats.Codec]) that encodes and decodes records by
[`Record`][bliptk.store.records.Record]'s one schema; adding a format is that module and one
``register_format(RecordFormat(...))``."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..core.errors import InvalidOptionError, option_error

__all__ = [
    "FORMATS",
    "RECORD_FORMATS",
    "SHARD_FORMATS",
    "Codec",
    "RecordFormat",
    "codec",
    "file_format_of",
    "register_format",
    "shard_format_of",
]


class Codec(Protocol):
    """How one format writes and reads records."""

    def header(self) -> bytes:
        """What a records file starts with (CSV's header row; nothing for JSONL)."""
        ...

    def encode(self, record: dict) -> bytes:
        """One record, as a line or row of a records file."""
        ...

    def decode(self, data: bytes, source: Path) -> list[dict]:
        """The complete records of a records file's bytes; a last line torn by a kill is left out.

        Raises:
            InputError: A line other than the last is no record.
        """
        ...

    def decode_shard(self, shard: Path) -> list[dict]:
        """The records of one shard, what it holds whole (a torn line or file is skipped)."""
        ...


@dataclass(frozen=True)
class RecordFormat:
    """One format.

    Attributes:
        name: Its name (``--format``).
        module: The module whose ``CODEC`` writes and reads it, imported when first used.
        suffixes: The names of a records file in it (``.jsonl``); none: shards only.
        shard_suffixes: The names of its shards (``.parquet``); none: records files only.
    """

    name: str
    module: str
    suffixes: tuple[str, ...] = ()
    shard_suffixes: tuple[str, ...] = ()


FORMATS: dict[str, RecordFormat] = {}
"""The registered formats, by name."""


def register_format(format: RecordFormat) -> None:
    """Make a format writable and readable by every job and reader."""
    FORMATS[format.name] = format


register_format(RecordFormat("jsonl", "bliptk.store.format_jsonl", suffixes=(".jsonl", ".ndjson"), shard_suffixes=(".json", ".jsonl")))
register_format(RecordFormat("csv", "bliptk.store.format_csv", suffixes=(".csv",)))
register_format(RecordFormat("parquet", "bliptk.store.format_parquet", shard_suffixes=(".parquet",)))

RECORD_FORMATS = tuple(name for name, format in FORMATS.items() if format.suffixes)
"""The formats of a records file (the batch command's output)."""
SHARD_FORMATS = tuple(name for name, format in FORMATS.items() if format.shard_suffixes)
"""The formats of a Ray job's shards."""


def codec(name: str) -> Codec:
    """The codec of a registered format."""
    return importlib.import_module(FORMATS[name].module).CODEC


_RAY = " (Parquet shards are written by the Ray path: ray=True, --ray)"


def file_format_of(path: str | os.PathLike, format: str | None = None) -> str:
    """The format of a records file: ``format`` if given, else by its extension.

    Raises:
        InvalidOptionError: An unknown ``format`` (or one of shards only), or an extension that
            names no records file's format.
    """
    if format is not None:
        if format not in RECORD_FORMATS:
            raise option_error(
                f"format must be one of {', '.join(RECORD_FORMATS)}, got {format!r}{_RAY if format in SHARD_FORMATS else ''}", "format"
            )
        return format
    suffix = Path(path).suffix.lower()
    found = next((name for name, known in FORMATS.items() if suffix in known.suffixes), None)
    if found is None:
        shards_only = any(suffix in known.shard_suffixes for known in FORMATS.values())
        written = " or ".join(s for name in RECORD_FORMATS for s in FORMATS[name].suffixes[:1])
        raise InvalidOptionError(
            f"{path}: records are written as {written}, not {suffix or 'a file without extension'}{_RAY if shards_only else ''}; "
            "name the file so, or pass format=",
            command_line={"pass format=": "pass --format"},
        )
    return found


def shard_format_of(path: Path) -> str | None:
    """The format of a shard by its name, or None for a file that is no shard."""
    name = path.name.lower()
    return next((fmt for fmt, known in FORMATS.items() if any(name.endswith(suffix) for suffix in known.shard_suffixes)), None)
