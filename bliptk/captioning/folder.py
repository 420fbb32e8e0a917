"""Captioning whole folders: one record per input, written as it is made, resumable.

Every input gets exactly one record ([`bliptk.store.records`][bliptk.store.records]): its caption, or an ``error`` with
the error's type and message, and what made it (model, weights, options). Inputs are identified by
their resolved path, so a folder given once relatively and once absolutely is one set of inputs.
Records are appended to the output and flushed one by one, so a killed run loses only the batch
in flight; ``resume=True`` reads the file back and skips the inputs already captioned with the
same model, weights and options. The Ray path ([`bliptk.captioning.ray_data`][bliptk.captioning.ray_data]) shares the records and
the rule of what is done.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core import pipeline
from ..core.decoding import Caption, DecodingOptions, prompt_ids
from ..core.errors import NoInputsError, option_error
from ..core.files import media_files
from ..core.preprocess import load_image
from ..core.tokenizer import SEP_TOKEN_ID
from ..core.video import VideoOptions
from ..store.records import RecordOutput, done_inputs, input_error, input_identity, key_of, make_record, record_key, record_options
from .options import FolderJobOptions, job_options

__all__ = [
    "BatchStatus",
    "Prepared",
    "StopAfterBatch",
    "batches",
    "caption_files",
    "caption_prepared",
    "check_batch_options",
    "expand_inputs",
    "made_by",
    "prefetched",
    "prepare",
    "resume_output",
]

logger = logging.getLogger(__name__)


def expand_inputs(inputs: Iterable, recursive: bool = False) -> list[str]:
    """The inputs a batch job captions, in order, each once, by resolved path: folders are listed
    (their image and video files, sorted), glob patterns expanded (sorted; what they match is kept
    as is, folders too, so that each gets its record), other paths kept (a missing one gets an
    error record).

    Raises:
        NoInputsError: Nothing to caption; the message says what was searched and, when
            subfolders hold image or video files, suggests ``recursive``.
    """
    paths: list[str] = []
    empty: list[str] = []
    in_subfolders = 0
    for item in inputs:
        text = os.fspath(item)
        if _is_folder(text):
            found = [str(p) for p in media_files(text, recursive=recursive)]
            if not found:
                empty.append(f"folder {text} holds no image or video files" + (" (subfolders included)" if recursive else ""))
                in_subfolders += 0 if recursive else len(media_files(text, recursive=True))
            paths.extend(found)
        elif glob.has_magic(text) and not _exists(text):  # a file named "a[1].jpg" is a file
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
    return list(dict.fromkeys(input_identity(path) for path in paths))


def _is_folder(path: str) -> bool:
    try:
        return Path(path).is_dir()
    except OSError:  # a name too long, ...: not a folder; the input's record says what it is
        return False


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:
        return False


def check_batch_options(options: DecodingOptions) -> None:
    """Check a batch job's decoding options (before any model loads, on the command line): one
    caption per input.

    Raises:
        InvalidOptionError: Several captions per input asked for.
    """
    if options.num_return_sequences != 1:
        raise option_error("a batch job writes one caption per input: num_return_sequences must be 1", "num_return_sequences")


@dataclass
class BatchStatus:
    """Counts of a batch run so far (updated as records are yielded).

    Attributes:
        total: Inputs in the job.
        skipped: Inputs already captioned in the output (``resume``).
        captioned: Inputs captioned in this run.
        failed: Inputs that got an error record in this run.
        interrupted: The run stopped early on Ctrl-C (after the batch in flight).
        failures: The error records of this run.
    """

    total: int = 0
    skipped: int = 0
    captioned: int = 0
    failed: int = 0
    interrupted: bool = False
    failures: list[dict] = field(default_factory=list)


@dataclass
class Prepared:
    """An input made ready for captioning: an image's pixels ``(3, S, S)``, a video's path, or the
    error that stopped it (an exception, or a record's ``{"type", "message"}``)."""

    path: str
    kind: str
    pixels: np.ndarray | None = None
    error: Exception | dict | None = None


def prepare(path: str, max_pixels: int | None, preprocessor) -> Prepared:
    """Read and preprocess one input; never raises for a bad input (its error is kept)."""
    from ..core.video import is_video

    try:
        if is_video(path):
            return Prepared(path, "video")
        return Prepared(path, "image", preprocessor.array(load_image(path, max_pixels=max_pixels)))
    except Exception as error:  # an input must never end the job: record what happened
        return Prepared(path, "image", error=input_error(error, path, "image"))


def caption_prepared(
    backend, batch: list[Prepared], options: DecodingOptions, video_options: VideoOptions, scores: bool = False
) -> list[tuple[Prepared, Caption | None, Exception | dict | None]]:
    """``(input, caption, error)`` for each input of a batch, in order: its images captioned
    together, each video from its frames; an input that fails gets its error, never stopping the
    others. With ``scores``, each caption's ``entropy`` is filled (its tokens teacher-forced over
    the same features). The one captioning step of the batch command and of the Ray actors."""
    images = [item for item in batch if item.error is None and item.kind == "image" and item.pixels is not None]
    captions = {}
    if images:
        features = backend.encode(np.stack([item.pixels for item in images if item.pixels is not None]))
        decoded = _scored(backend, features, pipeline.caption_features(backend, features, options), scores)
        captions = {id(item): caption for item, caption in zip(images, decoded, strict=True)}
    results: list[tuple[Prepared, Caption | None, Exception | dict | None]] = []
    for item in batch:
        if item.error is not None:
            results.append((item, None, item.error))
        elif item.kind == "video":
            try:
                features = pipeline.encode_video(backend, item.path, video_options)[None]
                prompt = pipeline.request_prompt(None, options, video=True)
                [caption] = _scored(backend, features, pipeline.caption_features(backend, features, options, [prompt]), scores)
                results.append((item, caption, None))
            except Exception as error:  # like an image, a video must never end the job
                results.append((item, None, input_error(error, item.path, "video")))
        else:
            results.append((item, captions[id(item)], None))
    return results


def _scored(backend, features: np.ndarray, captions: list[Caption], scores: bool) -> list[Caption]:
    """The captions, each with the entropy of its tokens' steps when ``scores`` (teacher-forced:
    the distributions the caption was generated from)."""
    if not scores:
        return captions
    from ..core.scoring import teacher_forced

    targets = [caption.token_ids or [SEP_TOKEN_ID] for caption in captions]  # the generated ids themselves, never re-tokenized text
    values = teacher_forced(backend.decoder, backend.tokenizer, features, targets, [caption.prompt for caption in captions])
    return [replace(caption, entropy=rows[: len(caption.token_ids), 1].tolist()) for caption, rows in zip(captions, values, strict=True)]


def prefetched(paths: list[str], load, workers: int, window: int) -> Iterator[Prepared]:
    """``load(path)`` of each path in order, loading up to ``window`` ahead on ``workers`` threads."""
    if workers == 0:
        for path in paths:
            yield load(path)
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
            yield future.result()


class StopAfterBatch:
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
    out: str | os.PathLike | RecordOutput | None = None,
    *,
    job: FolderJobOptions | None = None,
    progress: bool | None = None,
    status: BatchStatus | None = None,
    options: DecodingOptions | None = None,
    video_options: VideoOptions | None = None,
    **keywords,
) -> Iterator[dict]:
    """Caption many files, yielding one record per input as it is made
    ([`bliptk.Captioner.caption_files()`][bliptk.captioning.backend.CaptionBackend.caption_files], or any captioner's).

    Bad inputs never stop the job: each gets a record with an ``error`` (its type and
    message) instead of a caption. With ``out``, each record is also appended to that file
    and flushed, so a killed run keeps every finished record; ``resume=True`` continues such a
    file, skipping inputs captioned with the same model, weights and options, retrying those
    that failed, and dropping a torn last line. Ctrl-C stops after the batch in flight. The
    output has one writer: a second job on it fails at once, naming the process that writes it.

    Args:
        captioner: Any captioner (a [`CaptionBackend`][bliptk.captioning.backend.CaptionBackend]).
        inputs: Files, folders (their image and video files) and glob patterns, or one of them.
        out: A ``.jsonl`` or ``.csv`` file to write records to (or a [`RecordOutput`][bliptk.store.records.RecordOutput]
            already opened, which the caller closes); None only yields them.
        job: [`FolderJobOptions`][bliptk.captioning.options.FolderJobOptions]: ``recursive``,
            ``batch_size`` (8), ``workers`` (2), ``max_pixels``, ``resume``, ``format`` (each
            may be given as a keyword too).
        progress: Show a ``tqdm`` progress bar (None: when there is more than one batch).
        status: A [`BatchStatus`][bliptk.captioning.folder.BatchStatus] to keep counts in.
        options: [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] to start from.
        video_options: [`VideoOptions`][bliptk.core.video.VideoOptions] for the videos among the inputs.
        **keywords: Fields of the job's options, or of the decoding or video options (``prompt``,
            ``max_new_tokens``, ``num_frames``, ...), that replace theirs.

    Yields:
        Records (dicts, [`Record`][bliptk.store.records.Record]'s fields): ``path`` (the input's resolved
        path), ``kind`` (image or video), ``caption``, ``token_ids``, ``tokens``, ``logprobs``,
        ``finished``, ``model``, ``weights``, ``options``, ``error`` (None, or ``{"type",
        "message"}``) and ``runtime`` (None for torch).

    Raises:
        InvalidOptionError, NoInputsError, OutputExistsError, OutputLockedError, OutputError:
            Before any work; OutputError also when a write fails (a full disk), every record
            before it kept.
    """
    job, keywords = job_options(job, keywords)
    options, video_options = pipeline.resolve_options(options, video_options, **keywords)
    options = pipeline.own_options(captioner, options)  # records say the prompt a fine-tuned checkpoint captions after
    check_batch_options(options)
    prompt_ids(captioner.tokenizer, options.prompt_text, options.max_new_tokens, captioner.decoder.max_positions)
    paths = expand_inputs([inputs] if isinstance(inputs, str | os.PathLike) else inputs, job.recursive)
    output = RecordOutput(out, job.format, job.resume) if isinstance(out, str | os.PathLike) else out
    try:
        pipeline.say_if_random(captioner)
        run = _Job(captioner, options, video_options, status or BatchStatus(), job.scores)
        run.status.total = len(paths)
        if output is not None:
            paths = run.resume(output, paths)
        yield from run.run(paths, output, job, progress)
    finally:
        if output is not None and output is not out:
            output.close()


def made_by(captioner, options: DecodingOptions, video_options: VideoOptions | None = None):
    """Whether a record was made as ``caption_files(captioner, ..., options=options)`` makes them:
    the same model, weights, runtime and options (its own prompt applied), and no error. For
    reading one job's records from a file that may hold others'."""
    options = pipeline.own_options(captioner, options)
    provenance, recorded = pipeline.provenance(captioner), record_options(options, video_options or VideoOptions())
    return lambda record: not record.get("error") and key_of(record) == record_key(input_identity(record["path"]), provenance, recorded)


def resume_output(
    output: RecordOutput, existing: list[dict], paths: list[str], provenance: dict, options: dict, status: BatchStatus
) -> list[str]:
    """Start a folder job's output from its ``existing`` records: keep them but the failures of this
    job's inputs (tried again); the inputs not done yet (``status.skipped`` counts the others)."""
    done = done_inputs(existing, provenance, options)
    retried = {record_key(path, provenance, options) for path in paths}
    output.start([r for r in existing if not r.get("error") or key_of(r) not in retried])
    todo = [path for path in paths if path not in done]
    status.skipped = len(paths) - len(todo)
    return todo


class _Job:
    """One batch run: its captioner, options and counts."""

    def __init__(self, captioner, options: DecodingOptions, video_options: VideoOptions, status: BatchStatus, scores: bool = False):
        self.captioner, self.options, self.video_options, self.status = captioner, options, video_options, status
        self.scores = scores
        self.provenance = pipeline.provenance(captioner)
        self.record_options = record_options(options, video_options, scores)

    def resume(self, output: RecordOutput, paths: list[str]) -> list[str]:
        """Start the output: keep its records but the failures of this job's inputs (tried
        again), and leave out the inputs already done."""
        return resume_output(output, output.existing, paths, self.provenance, self.record_options, self.status)

    def record(self, item: Prepared, caption, error) -> dict:
        record = make_record(item.path, item.kind, self.provenance, self.record_options, caption, error)
        if error is not None:
            self.status.failed += 1
            self.status.failures.append(record)
        else:
            self.status.captioned += 1
        return record

    def run(self, paths: list[str], output: RecordOutput | None, job: FolderJobOptions, progress) -> Iterator[dict]:
        for batch in batches(paths, job, self.captioner.preprocessor, self.status, progress, "captioning"):
            for item, caption, error in caption_prepared(self.captioner, batch, self.options, self.video_options, self.scores):
                record = self.record(item, caption, error)
                if output is not None:
                    output.write(record)
                yield record


def batches(paths: list[str], job: FolderJobOptions, preprocessor, status: BatchStatus, progress, what: str) -> Iterator[list[Prepared]]:
    """The inputs of a folder job a batch at a time, read and preprocessed ahead on ``job.workers``
    threads, with a progress bar (``what`` it says is done: ``"captioning"``; None: shown when there
    is more than one batch) that counts ``status.failed``. Ctrl-C stops after the batch in flight
    (``status.interrupted``). The loop of every folder job: captions, explanations."""
    from ..core.progress import progress_bar

    show_progress = progress if progress is not None else len(paths) > job.batch_size
    load = lambda path: prepare(path, job.max_pixels, preprocessor)  # noqa: E731
    prepared = prefetched(paths, load, job.workers, window=job.batch_size * (job.workers + 1))
    with progress_bar(total=len(paths), desc=what, unit="file", disable=not show_progress) as bar, StopAfterBatch() as stop:
        while batch := list(itertools.islice(prepared, job.batch_size)):
            yield batch
            bar.update(len(batch))
            bar.set_postfix(failed=status.failed, refresh=False)
            if stop.requested:
                status.interrupted = True
                break
