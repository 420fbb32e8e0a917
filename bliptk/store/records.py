"""Records: what every captioning job writes, one per input, and how it is read back.

A record holds an input's caption (text, tokens, log-probabilities) or its error, and what made
it: the model, its weights ([`Weights`][bliptk.core.provenance.Weights]), the runtime when it is not
torch, and the options. [`Record`][bliptk.store.records.Record] declares the one schema: its fields,
which hold JSON (nested values), which a line must have to be a record, and each column's Arrow
type. Each format ([`bliptk.store.formats`][bliptk.store.formats]: JSONL and CSV records files,
JSONL and Parquet shards) encodes and decodes records by it, and
[`read_records()`][bliptk.store.records.read_records] reads any of them. The rule of what is
already done ([`done_inputs()`][bliptk.store.records.done_inputs]) is the same everywhere: an input
captioned with the same model, weights, runtime and options; a failure is never done.

An output file has one writer at a time (an OS file lock beside it, ``<output>.lock``, which
names the process that holds it), is rewritten only through a temporary file of its own, and
keeps every finished record whatever stops the run: a kill, a full disk, an unexpected error.
[`read_records()`][bliptk.store.records.read_records] reads back any file bliptk wrote, whatever its
paths and captions hold, dropping a last line torn by a kill wherever it tears.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

from ..core.errors import BliptkError, ImageLoadError, InputError, OutputError, OutputExistsError, VideoLoadError
from .formats import codec, file_format_of, shard_format_of
from .outputs import OutputLock, claim, reason, share

__all__ = [
    "OPTIONAL_FIELDS",
    "RECORD_FIELDS",
    "OutputLock",
    "Record",
    "RecordOutput",
    "done_inputs",
    "error_summary",
    "input_error",
    "input_identity",
    "key_of",
    "make_record",
    "read_output",
    "read_records",
    "record_key",
    "record_options",
]

logger = logging.getLogger(__name__)


def _column(arrow: str, *, nested: bool = False, required: bool = False, optional: bool = False, default: Any = None):
    """A field of [`Record`][bliptk.store.records.Record]: its Arrow type (``"string"``,
    ``"list<int64>"``...), whether it holds JSON (a nested value: text in a CSV cell or a shard's
    column), whether a line without it is no record, whether it is left out of a JSONL line when
    None (a column added after records were first written: files without it still read)."""
    return field(default=default, metadata={"arrow": arrow, "nested": nested, "required": required, "optional": optional})


@dataclass(frozen=True)
class Record:
    """One input's record, the schema every format reads and writes. Jobs give records as dicts
    (``asdict(record)``), in this order.

    Attributes:
        path: The input, as the job named it (a resolved path, or a URI).
        kind: ``"image"`` or ``"video"``.
        caption: The caption, prompt included; None for a failed input.
        token_ids: The generated tokens' ids (the ending ``[SEP]`` not included).
        tokens: Their WordPiece strings.
        logprobs: Each token's log-probability.
        finished: Whether the caption ended with ``[SEP]`` (else it was cut at ``max_new_tokens``).
        model: The model that made it.
        weights: Its weights ([`Weights.as_dict()`][bliptk.core.provenance.Weights.as_dict]); older
            records may lack them (and match no weights).
        options: Every decoding and video option the job captioned with.
        error: ``{"type", "message"}`` of a failed input, else None.
        runtime: The runtime, when it is not torch (``"onnx"``); None for torch, and left out of a
            JSONL line, as records were before runtimes were recorded.
        entropy: With ``scores`` (``--scores``), the entropy (nats) of the model's distribution at
            each generated token's step; else None, left out of a JSONL line.
        maps: An explanation job's record: its saved explanation's file, relative to the
            records file's folder (``maps/<name>.npz``); else None, left out of a JSONL line.
    """

    path: str = _column("string", required=True, default="")
    kind: str | None = _column("string")
    caption: str | None = _column("string")
    token_ids: list[int] | None = _column("list<int64>", nested=True)
    tokens: list[str] | None = _column("list<string>", nested=True)
    logprobs: list[float] | None = _column("list<float64>", nested=True)
    finished: bool | None = _column("bool", nested=True)
    model: str | None = _column("string", required=True)
    weights: dict | None = _column("json", nested=True)
    options: dict | None = _column("json", nested=True, required=True)
    error: dict | None = _column("json", nested=True, required=True)
    runtime: str | None = _column("string", optional=True)
    entropy: list[float] | None = _column("list<float64>", nested=True, optional=True)
    maps: str | None = _column("string", optional=True)

    @classmethod
    def from_row(cls, row) -> dict:
        """A decoded line, row or shard row as a record (a dict in the schema's order): nested
        fields given as JSON text (a CSV cell, a shard's column) parsed, the weights of records from
        before runtimes were recorded (``"dtype": "onnx float32"``) read as ``runtime: "onnx"``.

        Raises:
            TypeError, KeyError, ValueError: The row is no record.
        """
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise TypeError("not a record")
        for column in fields(cls):
            if column.metadata["required"] and column.name not in row:
                raise KeyError(column.name)
        record = {column.name: _value(row.get(column.name), column.metadata["nested"]) for column in fields(cls)}
        dtype = str((record["weights"] or {}).get("dtype", ""))
        if dtype.startswith("onnx "):  # 0.2's ONNX records named the runtime in the dtype
            record["weights"] = {**record["weights"], "dtype": dtype.removeprefix("onnx ")}
            record["runtime"] = record["runtime"] or "onnx"
        return record


def _value(value, nested: bool):
    """A field's value as a record holds it: JSON text of a nested field parsed ("" and None: none)."""
    if nested and isinstance(value, str):
        return json.loads(value) if value else None
    return value


RECORD_FIELDS = tuple(column.name for column in fields(Record))
"""The fields of a record, in order."""
OPTIONAL_FIELDS = tuple(column.name for column in fields(Record) if column.metadata["optional"])
"""The fields left out of a JSONL line when None (files written before they existed lack them)."""


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
    ``weights`` and ``runtime`` (see [`provenance()`][bliptk.captioning.backend.CaptionBackend.provenance]) and ``options``
    say how it was made."""
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
        "runtime": provenance.get("runtime"),
        "entropy": getattr(caption, "entropy", None) if caption is not None else None,
        "maps": None,
    }


def record_options(options, video_options, scores: bool = False) -> dict:
    """The ``options`` of a record: every field of the decoding options and of the video options
    (frames, pooling), which the inputs of a job share whatever they are; ``"scores": true`` for a
    job that adds each token's entropy (left out otherwise, so that earlier records stay resumable)."""
    return {**options.as_dict(), **video_options.as_dict(), **({"scores": True} if scores else {})}


def record_key(path: str, provenance: dict, options: dict) -> tuple:
    """What makes two records the same work: the input, the model, its weights and runtime, the
    options. (Records written before bliptk recorded weights have none, and match no weights.)"""
    weights = json.dumps(provenance.get("weights"), sort_keys=True)
    return (path, provenance["model"], provenance.get("runtime") or "torch", weights, json.dumps(options, sort_keys=True))


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


def read_records(path: str | os.PathLike, format: str | None = None) -> list[dict]:
    """The complete records of a records file (JSONL or CSV, by extension or ``format``) or of a
    folder of a Ray job's shards (see [`read_output()`][bliptk.store.records.read_output]).

    A last line torn by a killed run (anywhere: inside a field, inside a character) is left out.

    Raises:
        InputError: The file is not a records file of bliptk's: a line other than the last is
            not a record (the message names it). A missing file has no records.
    """
    path = Path(path)
    if path.is_dir():
        return read_output(path)
    if not path.is_file():
        return []
    return codec(file_format_of(path, format)).decode(path.read_bytes(), path)


def read_shards(shards: list[Path]) -> list[dict]:
    """The records of a job's shards, in order. A shard cut short by a killed job (a torn line, an
    unreadable Parquet file) gives what it holds whole: its other inputs are captioned again."""
    records: list[dict] = []
    for shard in shards:
        format = shard_format_of(shard)
        if format is not None:
            records.extend(codec(format).decode_shard(shard))
    return records


def read_output(output) -> list[dict]:
    """The records in an output folder's shards, one per input and way of making it (model,
    weights, runtime, options): an input that failed and was captioned on a rerun has only its
    caption; one that failed on every run has its latest failure."""
    folder = Path(output)
    if not folder.is_dir():
        return []
    latest: dict[tuple, dict] = {}
    shards = sorted(
        (p for p in folder.iterdir() if shard_format_of(p) is not None), key=lambda shard: (shard.stat().st_mtime_ns, shard.name)
    )
    for record in read_shards(shards):
        key = key_of(record)
        if key not in latest or latest[key]["error"]:
            latest[key] = record
    return list(latest.values())


# --- writing ------------------------------------------------------------------------------------------


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
        self.format = file_format_of(path, format)
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
        writer = codec(self.format)
        lines = [writer.header(), *(writer.encode(record) for record in kept)]
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
        line = codec(self.format).encode(record)
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
