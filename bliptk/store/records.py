"""Records: what every captioning job writes, one per input, and how it is read back.

A record holds an input's caption (text, tokens, log-probabilities) or its error, and what made
it: the model, its weights ([`Weights`][bliptk.core.provenance.Weights]) and the options. One schema
serves the batch command (JSONL or CSV files, [`RecordOutput`][bliptk.store.records.RecordOutput]) and the Ray path (JSONL or
Parquet shards). The rule of what is already done ([`done_inputs()`][bliptk.store.records.done_inputs]) is the same everywhere:
an input captioned with the same model, weights and options; a failure is never done.

An output file has one writer at a time (an OS file lock beside it, ``<output>.lock``, which
names the process that holds it), is rewritten only through a temporary file of its own, and
keeps every finished record whatever stops the run: a kill, a full disk, an unexpected error.
[`read_records()`][bliptk.store.records.read_records] reads back any file bliptk wrote, whatever its paths and captions hold,
dropping a last line torn by a kill wherever it tears.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from ..core.errors import (
    BliptkError,
    ImageLoadError,
    InputError,
    InvalidOptionError,
    OutputError,
    OutputExistsError,
    VideoLoadError,
    first_line,
    option_error,
)
from .outputs import OutputLock, claim, reason, share

__all__ = [
    "RECORD_FIELDS",
    "RECORD_FORMATS",
    "SHARD_FORMATS",
    "RecordOutput",
    "arrow_table",
    "done_inputs",
    "error_summary",
    "input_error",
    "input_identity",
    "OutputLock",
    "make_record",
    "read_output",
    "read_records",
    "read_shards",
    "record_key",
    "record_options",
]

logger = logging.getLogger(__name__)

RECORD_FORMATS = ("jsonl", "csv")
"""The formats of a records file (the batch command's output)."""
RECORD_FIELDS = ("path", "kind", "caption", "token_ids", "tokens", "logprobs", "finished", "model", "weights", "options", "error")
"""The fields of a record, in order."""
# Fields a CSV row holds as JSON text (the others are plain text).
_JSON_FIELDS = ("token_ids", "tokens", "logprobs", "finished", "weights", "options", "error")
# Fields without which a line is no record of bliptk's (older records may lack "weights").
_REQUIRED = ("path", "model", "options", "error")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


# --- what a record says -----------------------------------------------------------------------------


def input_identity(path: str) -> str:
    """The identity of an input: its resolved absolute path (symlinks and ``..`` followed), so that
    ``photos/a.jpg`` and ``/home/me/photos/a.jpg`` are one input; a URI (``s3://...``) as it is. A
    link that leads nowhere (broken, a loop) stays itself, so that its record names it."""
    if "://" in path:
        return path
    try:
        resolved = Path(path).resolve()
        return str(resolved) if resolved.exists() or not os.path.islink(path) else os.path.abspath(path)
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13), a name too long
        return os.path.abspath(path)


def error_summary(error: Exception) -> dict:
    """What a record says of an error: its ``type`` and ``message``."""
    return {"type": type(error).__name__, "message": str(error)}


def input_error(error: Exception, source: str, kind: str = "image") -> BliptkError:
    """What a bad input's record reports: bliptk's own errors as they are, anything unexpected as
    an [`ImageLoadError`][bliptk.core.errors.ImageLoadError] or [`VideoLoadError`][bliptk.core.errors.VideoLoadError] naming the input (and logged with its
    traceback, as the bug it is)."""
    if isinstance(error, BliptkError):
        return error
    logger.error("%s: unexpected error (a bug in bliptk: please report it)", source, exc_info=error)
    return (VideoLoadError if kind == "video" else ImageLoadError)(source, f"{type(error).__name__}: {error}")


def make_record(path: str, kind: str, provenance: dict, options: dict, caption=None, error: Exception | dict | None = None) -> dict:
    """One output record: the caption's text, tokens and log-probabilities, or, for a failed
    input, empty fields and ``error`` (an exception, or its [`error_summary()`][bliptk.store.records.error_summary]); ``model`` and
    ``weights`` (see [`provenance()`][bliptk.captioning.backend.CaptionVerbs.provenance]) and ``options`` say how it was made."""
    return {
        "path": path,
        "kind": kind,
        "caption": caption.text if caption is not None else None,
        "token_ids": caption.token_ids if caption is not None else None,
        "tokens": caption.tokens if caption is not None else None,
        "logprobs": caption.logprobs if caption is not None else None,
        "finished": caption.finished if caption is not None else None,
        "model": provenance["model"],
        "weights": provenance["weights"],
        "options": options,
        "error": (error if isinstance(error, dict) else error_summary(error)) if error else None,
    }


def record_options(options, video_options) -> dict:
    """The ``options`` of a record: every field of the decoding options and of the video options
    (frames, pooling), which the inputs of a job share whatever they are."""
    return {**options.as_dict(), **video_options.as_dict()}


def record_key(path: str, provenance: dict, options: dict) -> tuple:
    """What makes two records the same work: the input, the model and its weights, the options.
    (Records written before bliptk recorded weights have none, and match no weights.)"""
    return (path, provenance["model"], json.dumps(provenance.get("weights"), sort_keys=True), json.dumps(options, sort_keys=True))


def key_of(record: dict) -> tuple:
    """[`record_key()`][bliptk.store.records.record_key] of a record, its input by identity ([`input_identity()`][bliptk.store.records.input_identity])."""
    return record_key(input_identity(record["path"]), record, record["options"])


def done_inputs(records: Iterable[dict], provenance: dict, options: dict) -> set[str]:
    """The inputs (by identity) that need no more work: captioned (no error) with the same model,
    weights and options. A failed input is never done, so every rerun retries it; a record made
    with other weights (random ones, another checkpoint of the same name) or options is never
    reused."""
    done = set()
    for record in records:
        key = key_of(record)
        if not record.get("error") and key == record_key(key[0], provenance, options):
            done.add(key[0])
    return done


# --- reading ------------------------------------------------------------------------------------------


def format_of(path: str | os.PathLike, format: str | None = None) -> str:
    """The record format of an output: ``format`` if given, else by extension (``.jsonl``,
    ``.ndjson``, ``.csv``).

    Raises:
        InvalidOptionError: An unknown ``format``, or an extension that names no record format.
    """
    if format is not None:
        if format not in RECORD_FORMATS:
            ray = " (Parquet shards are written by the Ray path: ray=True, --ray)" if format == "parquet" else ""
            raise option_error(f"format must be one of {', '.join(RECORD_FORMATS)}, got {format!r}{ray}", "format")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        parquet = " (Parquet shards are written by the Ray path: ray=True, --ray)" if suffix == ".parquet" else ""
        raise InvalidOptionError(
            f"{path}: records are written as .jsonl or .csv, not {suffix or 'a file without extension'}{parquet}; "
            "name the file so, or pass format=",
            command_line={"pass format=": "pass --format"},
        )
    return _EXTENSIONS[suffix]


def read_records(path: str | os.PathLike, format: str | None = None) -> list[dict]:
    """The complete records of a records file (JSONL or CSV, by extension or ``format``).

    A last line torn by a killed run (anywhere: inside a field, inside a character) is left out.

    Raises:
        InputError: The file is not a records file of bliptk's: a line other than the last is
            not a record (the message names it). A missing file has no records.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    if format_of(path, format) == "csv":
        return _read_csv(path, data)
    lines = data.split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(_checked(json.loads(line.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as problem:
            if number < len(lines) or not _RECORD_START.startswith(line[: len(_RECORD_START)]):
                raise InputError(path, f"line {number} is not a bliptk record ({first_line(problem)})") from None
            logger.warning("%s: dropping a torn last line (a run stopped while writing it)", path)
    return records


# How every JSONL record of bliptk's starts: a torn last line starts so too (or with part of it).
_RECORD_START = b'{"path": '


def _read_csv(path: Path, data: bytes) -> list[dict]:
    text = data.decode("utf-8", errors="surrogateescape")  # paths the OS allows, undecodable bytes included
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return []
    if tuple(rows[0]) != RECORD_FIELDS:
        raise InputError(path, f"the header is not a bliptk records file's ({', '.join(RECORD_FIELDS)})")
    records = []
    for number, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(RECORD_FIELDS):
                raise ValueError(f"{len(row)} fields")
            record = {name: json.loads(value) if name in _JSON_FIELDS else value for name, value in zip(RECORD_FIELDS, row, strict=True)}
            # CSV has no null: a failed input's caption is None, a captioned one's a string ("" too).
            record["caption"] = None if record["error"] else record["caption"]
            records.append(_checked(record))
        except (ValueError, TypeError, KeyError) as problem:
            if number < len(rows):
                raise InputError(path, f"row {number} is not a bliptk record ({first_line(problem)})") from None
            logger.warning("%s: dropping a torn last row (a run stopped while writing it)", path)
    return records


def _checked(record) -> dict:
    """A parsed line as a record, or TypeError/KeyError when it is none."""
    if not isinstance(record, dict) or not isinstance(record["path"], str):
        raise TypeError("not a record")
    for name in _REQUIRED:
        record[name]  # noqa: B018 (KeyError when missing)
    return {name: record.get(name) for name in RECORD_FIELDS}


# --- Ray's shards: one flat schema -----------------------------------------------------------------------

# In a shard, weights, options and errors are JSON text, so that every shard has one flat, stable
# schema whatever they hold.
_SHARD_JSON_COLUMNS = ("weights", "options", "error")
SHARD_FORMATS = ("jsonl", "parquet")
"""The formats of a Ray job's shards."""


def flat_record(record: dict) -> dict:
    """A record as a shard row (its nested fields as JSON text)."""
    return {
        **record,
        **{name: json.dumps(record[name], sort_keys=True) if record[name] is not None else "" for name in _SHARD_JSON_COLUMNS},
    }


def unflat_record(row: dict) -> dict:
    """A shard row as a record."""
    return _checked({**row, **{name: json.loads(row[name]) if row.get(name) else None for name in _SHARD_JSON_COLUMNS}})


def arrow_table(records: list[dict]):
    """Records as an Arrow table with one fixed schema (so that every shard reads back alike)."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("path", pa.string()),
            ("kind", pa.string()),
            ("caption", pa.string()),
            ("token_ids", pa.list_(pa.int64())),
            ("tokens", pa.list_(pa.string())),
            ("logprobs", pa.list_(pa.float64())),
            ("finished", pa.bool_()),
            ("model", pa.string()),
            ("weights", pa.string()),
            ("options", pa.string()),
            ("error", pa.string()),
        ]
    )
    return pa.Table.from_pylist([flat_record(record) for record in records], schema=schema)


def read_shards(shards: list[Path]) -> list[dict]:
    """The records of JSONL and Parquet shards, in order. A shard cut short by a killed job (a torn
    JSONL line, an unreadable Parquet file) gives what it holds whole: its other inputs are
    captioned again."""
    records: list[dict] = []
    for shard in shards:
        if ".json" in shard.name:
            for line in shard.read_bytes().split(b"\n"):
                if not line.strip():
                    continue
                try:
                    records.append(unflat_record(json.loads(line.decode("utf-8"))))
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s: dropping a torn line", shard)
        elif shard.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(shard)
            except (OSError, pa.ArrowException) as error:
                logger.warning("%s: skipping an unreadable shard (%s)", shard, first_line(error))
                continue
            records.extend(unflat_record(row) for row in table.to_pylist())
    return records


def read_output(output) -> list[dict]:
    """The records in an output folder's shards, one per input and way of making it (model,
    weights, options): an input that failed and was captioned on a rerun has only its caption;
    one that failed on every run has its latest failure."""
    folder = Path(output)
    if not folder.is_dir():
        return []
    latest: dict[tuple, dict] = {}
    shards = sorted(
        (p for p in folder.iterdir() if p.suffix in (".json", ".jsonl", ".parquet")),
        key=lambda shard: (shard.stat().st_mtime_ns, shard.name),
    )
    for record in read_shards(shards):
        key = key_of(record)
        if key not in latest or latest[key]["error"]:
            latest[key] = record
    return list(latest.values())


# --- writing ------------------------------------------------------------------------------------------


def _jsonl_line(record: dict) -> bytes:
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a path with bytes that are no UTF-8: JSON escapes carry them
        return (json.dumps(record) + "\n").encode("ascii")


def _csv_line(record: dict) -> bytes:
    buffer = io.StringIO(newline="")
    row = [
        json.dumps(record.get(name)) if name in _JSON_FIELDS else ("" if record.get(name) is None else record[name])
        for name in RECORD_FIELDS
    ]
    csv.writer(buffer).writerow(row)
    return buffer.getvalue().encode("utf-8", errors="surrogateescape")


def _csv_header() -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerow(RECORD_FIELDS)
    return buffer.getvalue().encode("utf-8")


def _write_failed(path: Path, problem: OSError, kept: int) -> OutputError:
    """The error of a write that failed, saying what was kept."""
    return OutputError(
        f"{path}: cannot write: {reason(problem)}. The {kept} records finished before are kept; free space, then run "
        "again with resume=True to finish the rest",
        command_line={"resume=True": "--resume"},
    )


class RecordOutput:
    """A records file being written, by this process alone.

    Opening it checks everything about the output before any model loads: its folder exists and
    can be written, it is no folder, it is not someone else's file, nothing is overwritten (an
    existing file needs ``resume``), and no other process writes it. Use it as a context manager,
    or [`close()`][bliptk.store.records.RecordOutput.close] it.

    Args:
        path: The ``.jsonl`` or ``.csv`` file.
        format: ``"jsonl"`` or ``"csv"``; None picks by extension.
        resume: Continue the file: its records are read back (`existing`).

    Attributes:
        existing: The file's records when resuming (else empty).

    Raises:
        InvalidOptionError: An unknown format or extension.
        OutputExistsError: The file exists and ``resume`` is False.
        OutputLockedError: Another process writes it.
        OutputError: Its folder is missing or cannot be written, it is a folder, or (resuming) it is
            no records file of bliptk's.
    """

    def __init__(self, path: str | os.PathLike, format: str | None = None, resume: bool = False):
        self.format = format_of(path, format)
        self._claim = claim(path, replace=True, fix="pass resume=True to continue it")
        self.path = self._claim.path
        self._file: BinaryIO | None = None
        self._written = 0
        try:
            if not resume and self.path.exists() and self.path.stat().st_size > 0:
                raise OutputExistsError(self.path)
            self.existing = self._read_existing() if resume else []
            self._remove_stale_temporaries()
        except BaseException:
            self._claim.close()
            raise

    def _read_existing(self) -> list[dict]:
        try:
            return read_records(self.path, self.format)
        except InputError as problem:
            raise OutputError(f"{problem}; it is no records file of bliptk's, so it is left alone: choose another output") from None
        except OSError as problem:
            raise OutputError(f"{self.path}: cannot be read ({problem.strerror or problem})") from None

    def _remove_stale_temporaries(self) -> None:
        """Temporary files that a killed run left behind (nothing else writes here: the lock is ours)."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def start(self, kept: list[dict]) -> None:
        """Rewrite the file with the ``kept`` records, then append from there. The old file stays
        whole until the new one replaces it, through a temporary file of this run's own."""
        lines = [_csv_header()] if self.format == "csv" else []
        encode = _csv_line if self.format == "csv" else _jsonl_line
        lines += [encode(record) for record in kept]
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.writelines(lines)
            share(Path(temporary))
            os.replace(temporary, self.path)
            self._file = open(self.path, "ab")  # noqa: SIM115 (held open while the job runs; closed by close())
        except OSError as problem:
            raise _write_failed(self.path, problem, len(kept)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        self._written = len(kept)

    def write(self, record: dict) -> None:
        """Append one record, flushed to the OS at once (a killed run loses nothing written).

        Raises:
            OutputError: The write failed (a full disk, ...); the records before it are kept.
        """
        if self._file is None:
            raise OutputError(f"{self.path}: write() before start()")
        line = _csv_line(record) if self.format == "csv" else _jsonl_line(record)
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as problem:
            self._abandon()
            raise _write_failed(self.path, problem, self._written) from None
        self._written += 1

    def _abandon(self) -> None:
        """Close a file whose last write failed, dropping what its buffer still holds (a torn line
        at most, which reading back drops)."""
        file, self._file = self._file, None
        if file is None:
            return
        with contextlib.suppress(OSError):
            os.close(file.fileno())
        with contextlib.suppress(OSError, ValueError):
            file.close()

    def close(self) -> None:
        """Close the file and let other processes write it."""
        try:
            if self._file is not None:
                file, self._file = self._file, None
                try:
                    file.close()
                except OSError as problem:
                    raise _write_failed(self.path, problem, self._written) from None
        finally:
            self._claim.close()

    def __enter__(self) -> RecordOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
