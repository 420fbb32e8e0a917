"""Captioning whole folders: one record per input, written as it is made, resumable.

Every input gets a record: its caption, or an ``error`` with the error's type and message, and
what made it (model, weights, options). Records are appended to the output file and flushed one
by one, so a killed run loses only the batch in flight; ``resume=True`` reads the file back, drops
a half-written last line and the failed records, and skips the inputs already captioned with the
same model, weights and options. The Ray path (:mod:`bliptk.distributed`) shares the records and
the rule of what is done.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import signal
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .decoding import DecodingOptions, options_with, prompt_ids
from .errors import (
    BliptkError,
    ImageLoadError,
    InvalidOptionError,
    NoInputsError,
    OutputExistsError,
    VideoLoadError,
    check_positive_int,
)
from .files import image_files
from .preprocess import DEFAULT_MAX_PIXELS, load_image

__all__ = [
    "BatchStatus",
    "RECORD_FORMATS",
    "RECORD_FIELDS",
    "caption_files",
    "done_inputs",
    "expand_inputs",
    "make_record",
    "read_records",
    "record_key",
]

logger = logging.getLogger(__name__)

RECORD_FORMATS = ("jsonl", "csv")
RECORD_FIELDS = ("path", "kind", "caption", "token_ids", "tokens", "logprobs", "finished", "model", "weights", "options", "error")
_JSON_FIELDS = ("token_ids", "tokens", "logprobs", "weights", "options", "error")


def expand_inputs(inputs: Iterable, recursive: bool = False) -> list[str]:
    """The files a batch job captions, in order: folders are listed (their image files, sorted),
    glob patterns expanded (sorted; what they match is kept as is, directories too, so that each
    gets its record), other paths kept as given (a missing one gets an error record).

    Raises:
        NoInputsError: Nothing to caption; the message says what was searched and, when
            subfolders hold image files, suggests ``recursive``.
    """
    paths: list[str] = []
    empty: list[str] = []
    in_subfolders = 0
    for item in inputs:
        text = os.fspath(item)
        if Path(text).is_dir():
            found = [str(p) for p in image_files(text, recursive=recursive)]
            if not found:
                empty.append(f"folder {text} holds no image files" + (" (subfolders included)" if recursive else ""))
                in_subfolders += 0 if recursive else len(image_files(text, recursive=True))
            paths.extend(found)
        elif glob.has_magic(text) and not Path(text).exists():  # a file named "a[1].jpg" is a file
            matches = sorted(glob.glob(text, recursive=recursive))
            if not matches:
                empty.append(f"pattern {text!r} matches no files")
            paths.extend(matches)
        else:
            paths.append(text)
    if not paths:
        raise NoInputsError(empty or ["no inputs were given"], in_subfolders)
    for description in empty:
        logger.warning("%s", description)
    return paths


def record_key(path: str, provenance: dict, options: dict) -> tuple:
    """What makes two records the same work: the input, the model and its weights, the options.
    (Records written before bliptk recorded weights have none, and match no weights.)"""
    return (path, provenance["model"], json.dumps(provenance.get("weights"), sort_keys=True), json.dumps(options, sort_keys=True))


def _key_of(record: dict) -> tuple:
    return record_key(record["path"], record, record["options"])


def done_inputs(records: Iterable[dict], provenance: dict, options: dict) -> set[str]:
    """The inputs that need no more work: captioned (no error) with the same model, weights and
    options. A failed input is never done, so every rerun retries it; a record made with other
    weights (random ones, another checkpoint of the same name) or options is never reused."""
    return {record["path"] for record in records if not record.get("error") and _key_of(record) == record_key(record["path"], provenance, options)}


def read_records(path: str | os.PathLike) -> list[dict]:
    """The complete records of an output file (JSONL or CSV by extension); a torn last line, as
    left by a killed run, is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    records = []
    if _format_of(path) == "csv":
        for row in csv.DictReader(io.StringIO(text)):
            try:
                records.append({name: json.loads(row[name]) if name in _JSON_FIELDS or name == "finished" else row[name] for name in RECORD_FIELDS})
            except (TypeError, KeyError, json.JSONDecodeError):
                logger.warning("%s: dropping a torn or malformed row", path)
        for record in records:
            record["caption"] = record["caption"] or None
        return records
    for line in text.splitlines():
        try:
            record = json.loads(line)
            _key_of(record)
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s: dropping a torn or malformed line", path)
            continue
        records.append(record)
    return records


def _format_of(path: Path, format: str | None = None) -> str:
    if format is not None:
        if format not in RECORD_FORMATS:
            raise InvalidOptionError(f"format must be one of {', '.join(RECORD_FORMATS)}, got {format!r}")
        return format
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


class _Writer:
    """Appends records to a file, one flushed line each."""

    def __init__(self, path: Path, format: str, kept: list[dict]):
        self.format = format
        # Rewrite what is kept through a temporary file, so the old file is whole until replaced.
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8", newline="") as file:
            if format == "csv":
                csv.writer(file).writerow(RECORD_FIELDS)
            for record in kept:
                file.write(self._line(record))
        os.replace(temporary, path)
        self.file = open(path, "a", encoding="utf-8", newline="")

    def _line(self, record: dict) -> str:
        if self.format == "jsonl":
            return json.dumps(record, ensure_ascii=False) + "\n"
        buffer = io.StringIO()
        row = [json.dumps(record.get(name)) if name in _JSON_FIELDS or name == "finished" else (record.get(name) or "") for name in RECORD_FIELDS]
        csv.writer(buffer).writerow(row)
        return buffer.getvalue()

    def write(self, record: dict) -> None:
        self.file.write(self._line(record))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class BatchStatus:
    """Counts of a batch run so far (updated as records are yielded).

    Attributes:
        total: Inputs in the job.
        skipped: Inputs already captioned in the output (``resume``).
        captioned: Inputs captioned in this run.
        failed: Inputs that got an error record in this run.
        interrupted: The run stopped early on Ctrl-C (after the batch in flight).
    """

    total: int = 0
    skipped: int = 0
    captioned: int = 0
    failed: int = 0
    interrupted: bool = False
    failures: list[dict] = field(default_factory=list)


def _load_item(path: str, max_pixels: int | None, preprocessor):
    """(kind, pixels or None, error or None) for one input; never raises for a bad input."""
    from .video import is_video

    try:
        if is_video(path):
            return "video", None, None
        return "image", preprocessor.array(load_image(path, max_pixels=max_pixels)), None
    except Exception as error:  # an input must never end the job: record what happened
        return "image", None, input_error(error, path)


def input_error(error: Exception, source: str, kind: str = "image") -> BliptkError:
    """What a bad input's record reports: bliptk's own errors as they are, anything unexpected as
    an :class:`ImageLoadError` or :class:`VideoLoadError` naming the input (and logged with its
    traceback)."""
    if isinstance(error, BliptkError):
        return error
    logger.error("%s: unexpected error", source, exc_info=error)
    return (VideoLoadError if kind == "video" else ImageLoadError)(source, f"{type(error).__name__}: {error}")


def error_summary(error: Exception) -> dict:
    """What a record says of an error: its ``type`` and ``message``."""
    return {"type": type(error).__name__, "message": str(error)}


def make_record(path: str, kind: str, provenance: dict, options: dict, caption=None, error: Exception | dict | None = None) -> dict:
    """One output record: the caption's text, tokens and log-probabilities, or, for a failed
    input, empty fields and ``error`` (an exception, or its :func:`error_summary`); ``model`` and
    ``weights`` (see :meth:`~bliptk.Captioner.provenance`) and ``options`` say how it was made."""
    return {
        "path": path,
        "kind": kind,
        "caption": caption.text if caption else None,
        "token_ids": caption.token_ids if caption else None,
        "tokens": caption.tokens if caption else None,
        "logprobs": caption.logprobs if caption else None,
        "finished": caption.finished if caption else None,
        "model": provenance["model"],
        "weights": provenance["weights"],
        "options": options,
        "error": (error if isinstance(error, dict) else error_summary(error)) if error else None,
    }


def _prefetched(paths: list[str], load, workers: int, window: int) -> Iterator[tuple[str, tuple]]:
    """``(path, load(path))`` in order, loading up to ``window`` ahead on ``workers`` threads."""
    if workers == 0:
        for path in paths:
            yield path, load(path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bliptk-load") as pool:
        pending: deque = deque()
        remaining = iter(paths)
        for path in remaining:
            pending.append((path, pool.submit(load, path)))
            if len(pending) >= window:
                break
        while pending:
            path, future = pending.popleft()
            following = next(remaining, None)
            if following is not None:
                pending.append((following, pool.submit(load, following)))
            yield path, future.result()


class _StopAfterBatch:
    """While active, the first Ctrl-C sets a flag (the run stops after the batch in flight); a
    second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        logger.warning("interrupted: stopping after the current batch (Ctrl-C again to stop now)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def caption_files(
    captioner,
    inputs,
    out: str | os.PathLike | None = None,
    *,
    format: str | None = None,
    recursive: bool = False,
    batch_size: int = 8,
    workers: int = 2,
    resume: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    num_frames: int = 16,
    pooling: str = "mean",
    progress: bool | None = None,
    status: BatchStatus | None = None,
    options: DecodingOptions | None = None,
    **decoding_options,
) -> Iterator[dict]:
    """Caption many files, yielding one record per input as it is made
    (:meth:`bliptk.Captioner.caption_files`).

    Bad inputs never stop the job: each gets a record with an ``error`` (its type and
    message) instead of a caption. With ``out``, each record is also appended to that file
    and flushed, so a killed run keeps every finished record; ``resume=True`` continues such a
    file, skipping inputs captioned with the same model, weights and options, retrying those
    that failed, and dropping a torn last line. Ctrl-C stops after the batch in flight.

    Args:
        captioner: The :class:`~bliptk.Captioner` (``self`` of the method).
        inputs: Files, folders (their image files) and glob patterns, or one of them.
        out: A ``.jsonl`` or ``.csv`` file to write records to; None only yields them.
        format: ``"jsonl"`` or ``"csv"``; None picks by ``out``'s extension.
        recursive: Look in subfolders of folders (and let ``**`` match in patterns).
        batch_size: Images captioned together.
        workers: Threads that read and preprocess the next images while the model works (0:
            none).
        resume: Continue an existing ``out`` (without it, an existing non-empty ``out`` is
            an error, so that nothing is overwritten by accident).
        max_pixels: Refuse images with more pixels than this (decompression bombs).
        num_frames, pooling: For videos, as in :meth:`caption`.
        progress: Show a ``tqdm`` progress bar (None: when there is more than one batch).
        status: A :class:`~bliptk.batch.BatchStatus` to keep counts in.
        options: :class:`~bliptk.DecodingOptions` to start from.
        **decoding_options: Fields of :class:`~bliptk.DecodingOptions` (``prompt``,
            ``max_new_tokens``, ``temperature``, ...) that replace those of ``options``.

    Yields:
        Records (dicts): ``path``, ``kind`` (image or video), ``caption``, ``token_ids``,
        ``tokens``, ``logprobs``, ``finished``, ``model``, ``weights``, ``options``, and
        ``error`` (None, or ``{"type", "message"}``).

    Raises:
        InvalidOptionError, NoInputsError, OutputExistsError: Before any work.
    """
    from tqdm.auto import tqdm

    captioner._say_if_random()
    options = options_with(options, **decoding_options)
    if options.num_return_sequences != 1:
        raise InvalidOptionError("caption_files writes one caption per input: num_return_sequences must be 1")
    check_positive_int("batch_size", batch_size)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidOptionError(f"workers must be an integer >= 0, got {workers!r}")
    if max_pixels is not None:
        check_positive_int("max_pixels", max_pixels)
    prompt_ids(captioner.tokenizer, options.prompt_text, options.max_new_tokens, captioner.max_positions)
    record_options = {**options.as_dict(), "num_frames": num_frames, "pooling": pooling}
    paths = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs, recursive)
    status = status if status is not None else BatchStatus()
    status.total = len(paths)

    provenance = captioner.provenance()
    writer = None
    if out is not None:
        out = Path(out)
        file_format = _format_of(out, format)
        if not resume and out.exists() and out.stat().st_size > 0:
            raise OutputExistsError(out)
        existing = read_records(out) if resume else []
        done = done_inputs(existing, provenance, record_options)
        # Keep every record but the failures of this job's inputs, which are tried again.
        retried = {record_key(path, provenance, record_options) for path in paths}
        kept = [r for r in existing if not r.get("error") or _key_of(r) not in retried]
        before = len(paths)
        paths = [path for path in paths if path not in done]
        status.skipped = before - len(paths)
        writer = _Writer(out, file_format, kept)

    def emit(record: dict) -> dict:
        if record.get("error"):
            status.failed += 1
            status.failures.append(record)
        else:
            status.captioned += 1
        if writer is not None:
            writer.write(record)
        return record

    def result(path, kind, caption=None, error=None) -> dict:
        return make_record(path, kind, provenance, record_options, caption, error)

    show_progress = progress if progress is not None else len(paths) > batch_size
    bar = tqdm(total=len(paths), desc="captioning", unit="img", disable=not show_progress)
    load = lambda path: _load_item(path, max_pixels, captioner.preprocessor)  # noqa: E731
    try:
        with _StopAfterBatch() as stop:
            loaded = _prefetched(paths, load, workers, window=batch_size * (workers + 1))
            batch: list[tuple[str, object]] = []
            for index, (path, (kind, pixels, error)) in enumerate(loaded):
                if error is not None:
                    yield emit(result(path, kind, error=error))
                elif kind == "video":
                    try:
                        caption = captioner.caption(path, options=options, num_frames=num_frames, pooling=pooling)
                    except Exception as video_error:  # like an image, a video must never end the job
                        yield emit(result(path, kind, error=input_error(video_error, path, kind)))
                    else:
                        yield emit(result(path, kind, caption))
                else:
                    batch.append((path, pixels))
                last = index == len(paths) - 1
                if len(batch) == batch_size or (last and batch):
                    pixels = np.stack([pixels for _, pixels in batch])
                    for (image_path, _), caption in zip(batch, captioner.caption_pixels(pixels, options)):
                        yield emit(result(image_path, "image", caption))
                    batch = []
                bar.update(1)
                bar.set_postfix(failed=status.failed, refresh=False)
                if stop.requested and not batch:
                    status.interrupted = True
                    break
    finally:
        bar.close()
        if writer is not None:
            writer.close()
