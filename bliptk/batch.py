"""Captioning whole folders: one record per input, written as it is made, resumable.

Every input gets a record: its caption, or an ``error`` with the error's type and message. Records
are appended to the output file and flushed one by one, so a killed run loses only the batch in
flight; ``resume=True`` reads the file back, drops a half-written last line and the failed
records, and skips the inputs already captioned with the same model and options.
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

from .decoding import DecodingOptions, encode_prompt
from .errors import BliptkError, ImageLoadError, InvalidOptionError, check_positive_int
from .files import image_files
from .preprocess import DEFAULT_MAX_PIXELS, load_image

__all__ = ["BatchStatus", "FORMATS", "RECORD_FIELDS", "caption_files", "expand_inputs", "read_records"]

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
RECORD_FIELDS = ("path", "kind", "caption", "token_ids", "tokens", "logprobs", "finished", "model", "options", "error")
_JSON_FIELDS = ("token_ids", "tokens", "logprobs", "options", "error")


def expand_inputs(inputs: Iterable, recursive: bool = False) -> list[str]:
    """The files a batch job captions, in order: folders are listed (their image files, sorted),
    glob patterns expanded (sorted; what they match is kept as is, directories too, so that each
    gets its record), other paths kept as given. A pattern that matches nothing is kept, to be
    reported as missing."""
    paths: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        if Path(text).is_dir():
            paths.extend(str(p) for p in image_files(text, recursive=recursive))
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=recursive))
            paths.extend(matches or [text])
        else:
            paths.append(text)
    return paths


def _record_key(record: dict) -> tuple:
    return (record["path"], record["model"], json.dumps(record["options"], sort_keys=True))


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
            _record_key(record)
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s: dropping a torn or malformed line", path)
            continue
        records.append(record)
    return records


def _format_of(path: Path, format: str | None = None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise InvalidOptionError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
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
        return "image", preprocessor.tensor(load_image(path, max_pixels=max_pixels)), None
    except Exception as error:  # an input must never end the job: record what happened
        return "image", None, input_error(error, path)


def input_error(error: Exception, source: str) -> BliptkError:
    """What a bad input's record reports: bliptk's own errors as they are, anything unexpected as
    an :class:`ImageLoadError` naming the input (and logged with its traceback)."""
    if isinstance(error, BliptkError):
        return error
    logger.error("%s: unexpected error", source, exc_info=error)
    return ImageLoadError(source, f"{type(error).__name__}: {error}")


def make_record(path: str, kind: str, model: str, options: dict, caption=None, error: Exception | None = None) -> dict:
    """One output record: the caption's text, tokens and log-probabilities, or, for a failed
    input, empty fields and ``error`` with the error's type and message."""
    return {
        "path": path,
        "kind": kind,
        "caption": caption.text if caption else None,
        "token_ids": caption.token_ids if caption else None,
        "tokens": caption.tokens if caption else None,
        "logprobs": caption.logprobs if caption else None,
        "finished": caption.finished if caption else None,
        "model": model,
        "options": options,
        "error": {"type": type(error).__name__, "message": str(error)} if error else None,
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
    options: DecodingOptions | None = None,
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
) -> Iterator[dict]:
    """See :meth:`bliptk.Captioner.caption_files`."""
    from tqdm.auto import tqdm

    options = options or DecodingOptions()
    check_positive_int("batch_size", batch_size)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidOptionError(f"workers must be an integer >= 0, got {workers!r}")
    if max_pixels is not None:
        check_positive_int("max_pixels", max_pixels)
    encode_prompt(captioner.tokenizer, options, captioner.text_decoder.max_positions)
    record_options = {**options.as_dict(), "num_frames": num_frames, "pooling": pooling}
    paths = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs, recursive)
    status = status if status is not None else BatchStatus()
    status.total = len(paths)

    writer = None
    if out is not None:
        out = Path(out)
        file_format = _format_of(out, format)
        existing = read_records(out) if resume else []
        if not resume and out.exists() and out.stat().st_size > 0:
            raise InvalidOptionError(f"{out} exists; pass resume=True (--resume) to continue it, or choose another file")
        done = {_record_key(r) for r in existing if not r.get("error")}
        # Keep every finished record; drop failures of this job (they are retried) and torn lines.
        key_of = lambda path: (path, captioner.name, json.dumps(record_options, sort_keys=True))  # noqa: E731
        retried = {key_of(path) for path in paths}
        kept = [r for r in existing if not r.get("error") or _record_key(r) not in retried]
        before = len(paths)
        paths = [path for path in paths if key_of(path) not in done]
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
        return make_record(path, kind, captioner.name, record_options, caption, error)

    show = progress if progress is not None else len(paths) > batch_size
    bar = tqdm(total=len(paths), desc="captioning", unit="img", disable=not show)
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
                        caption = captioner.caption(path, num_frames=num_frames, pooling=pooling, **options.as_dict())
                        yield emit(result(path, kind, caption))
                    except BliptkError as video_error:
                        yield emit(result(path, kind, error=video_error))
                else:
                    batch.append((path, pixels))
                last = index == len(paths) - 1
                if len(batch) == batch_size or (last and batch):
                    import torch

                    features = captioner.image_encoder(torch.stack([pixels for _, pixels in batch]))
                    for (image_path, _), caption in zip(batch, captioner.caption_features(features, options)):
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
