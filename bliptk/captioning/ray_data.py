"""Captioning on a Ray cluster through Ray Data.

bliptk grows no scheduler of its own: [`caption_dataset()`][bliptk.captioning.ray_data.caption_dataset] builds a Ray Data pipeline in which
Ray tasks read and preprocess the inputs and an actor pool captions them, each actor loading the
captioner once and captioning each batch with the batch command's own step
([`bliptk.captioning.folder.caption_prepared()`][bliptk.captioning.folder.caption_prepared]: images together, videos from their frames). Records have
the schema of [`bliptk.store.records`][bliptk.store.records] and go to JSONL or Parquet shards in an output folder; a rerun
skips the inputs already captioned with the same model, weights and options. Ray is optional
(the ``ray`` extra: ``pip install -e '.[ray]'``); importing bliptk never imports it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..core.decoding import DecodingOptions
from ..core.errors import check_positive_int, option_error
from ..core.files import IMAGE_EXTENSIONS
from ..core.optional import optional
from ..core.pipeline import provenance, resolve_options
from ..core.preprocess import Preprocessor, load_image_bytes
from ..core.quiet import quiet_loggers
from ..core.video import VideoOptions
from ..store.format_parquet import arrow_table
from ..store.formats import SHARD_FORMATS
from ..store.outputs import claim
from ..store.records import (
    done_inputs,
    error_summary,
    input_error,
    input_identity,
    make_record,
    read_output,
    read_shards,
    record_options,
)
from . import runtimes
from .folder import Prepared, caption_prepared, check_batch_options, expand_inputs, prepare
from .options import FolderJobOptions, job_options
from .runtimes import LoadOptions

__all__ = ["ActorPool", "RunSummary", "caption_dataset", "read_output"]

logger = logging.getLogger(__name__)

# CPUs kept beside the captioning actors for reading, preprocessing and writing tasks: half for
# the reads and half for the writes, so that records are written while captioning goes on.
READ_CPUS = 0.5
TASK_CPUS = READ_CPUS / 2


def _ray():
    return optional("ray")


@dataclass(frozen=True)
class RunSummary:
    """What a [`caption_dataset()`][bliptk.captioning.ray_data.caption_dataset] run did.

    Attributes:
        total: Inputs in the source.
        skipped: Inputs already captioned in the output (same model, weights and options).
        captioned: Inputs captioned in this run.
        failed: Inputs that got an error record in this run.
        output: The output folder.
    """

    total: int
    skipped: int
    captioned: int
    failed: int
    output: str


@dataclass(frozen=True, kw_only=True)
class ActorPool:
    """The captioning actors of a Ray job.

    Attributes:
        num_workers: Captioning actors. None: with ``gpus_per_worker`` one per share of the
            cluster's GPUs, else as many as fit beside the CPUs kept for the reading tasks (at
            least 1).
        cpus_per_worker: CPUs each actor requests; it runs that many torch threads, rounded up.
            None: 1 with GPUs, else ``min(4, CPUs - 0.5)``, so that a small machine gives its one
            actor all but the reading share and a large one runs actors of 4 CPUs.
        gpus_per_worker: GPUs each actor requests.
    """

    num_workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0

    def __post_init__(self):
        if self.num_workers is not None:
            check_positive_int("num_workers", self.num_workers)
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise option_error(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}", "cpus_per_worker")
        if not self.gpus_per_worker >= 0:
            raise option_error(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}", "gpus_per_worker")

    def size(self, resources: dict, read_cpus: float = READ_CPUS) -> tuple[int, float]:
        """(actors, CPUs per actor) on a cluster with ``resources``: the actors leave ``read_cpus``
        to the reading tasks (on 2 CPUs, two 1-CPU actors starve the reads and the job hangs)."""
        cpus = float(resources.get("CPU", 1))
        free = max(0.5, cpus - read_cpus)
        cpus_per_worker = self.cpus_per_worker
        if cpus_per_worker is None:
            cpus_per_worker = 1.0 if self.gpus_per_worker else min(4.0, free / (self.num_workers or 1))
        num_workers = self.num_workers
        if num_workers is None:
            gpus = float(resources.get("GPU", 0))
            if self.gpus_per_worker and gpus:
                num_workers = max(1, int(gpus / self.gpus_per_worker))
            else:
                num_workers = max(1, int(free // cpus_per_worker))
        if num_workers * cpus_per_worker > free:
            logger.warning(
                "%d actors of %g CPUs need more than the %g CPUs this cluster has beside the reading tasks: "
                "the job waits until the cluster grows",
                num_workers,
                cpus_per_worker,
                free,
            )
        return num_workers, cpus_per_worker


# --- tasks and actors -----------------------------------------------------------------------------------


def _read_bytes(uri: str) -> bytes:
    """The bytes behind a URI: ``http(s)://`` with urllib, other schemes (``s3://``, ``gs://``,
    ``file://``, ...) through pyarrow's filesystems, which Ray Data ships with."""
    if uri.startswith(("http://", "https://")):
        from urllib.request import urlopen

        with urlopen(uri, timeout=60) as response:
            return response.read()
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _preprocess(row: dict, preprocessor: Preprocessor, max_pixels: int | None) -> dict:
    """Ray task: a row with ``path`` (and optionally ``bytes``, the encoded file) -> its kind and
    pixels, or its error (JSON ``{"type", "message"}``) in ``failure``. A local file is prepared as
    the batch command prepares it (a video is captioned from its file by the actor); bytes and URIs
    are images."""
    path = str(row["path"])
    if row.get("bytes") is None and "://" not in path:
        item = prepare(path, max_pixels, preprocessor)
    else:
        try:
            data = row["bytes"] if row.get("bytes") is not None else _read_bytes(path)
            item = Prepared(path, "image", preprocessor.array(load_image_bytes(data, path, max_pixels)))
        except Exception as error:  # an input must never fail the job
            item = Prepared(path, "image", error=input_error(error, path))
    size = preprocessor.image_size
    pixels = item.pixels if item.pixels is not None else np.zeros((3, size, size), dtype=np.float32)
    failure = json.dumps(error_summary(item.error)) if isinstance(item.error, Exception) else ""
    return {"path": path, "kind": item.kind, "pixels": pixels, "failure": failure}


class _CaptionActor:
    """Ray actor: loads the captioner once, in its runtime (``bliptk.load``: a checkpoint into torch,
    an export into ONNX Runtime), then captions batches with the batch command's step."""

    def __init__(self, load: dict, options: dict, video_options: dict, scores: bool = False):
        self.captioner = runtimes.load(LoadOptions(**load))
        self.options, self.video_options, self.scores = DecodingOptions(**options), VideoOptions(**video_options), scores
        self.provenance = provenance(self.captioner)
        self.record_options = record_options(self.options, self.video_options, scores)

    def __call__(self, batch: dict):
        items = [
            Prepared(str(path), str(kind), pixels, json.loads(failure) if failure else None)
            for path, kind, pixels, failure in zip(batch["path"], batch["kind"], batch["pixels"], batch["failure"], strict=True)
        ]
        results = caption_prepared(self.captioner, items, self.options, self.video_options, self.scores)
        return arrow_table(
            [make_record(item.path, item.kind, self.provenance, self.record_options, caption, error) for item, caption, error in results]
        )


# --- the job ---------------------------------------------------------------------------------------------


def caption_dataset(
    source,
    *,
    output,
    model: str | LoadOptions = "ViT-L/16",
    job: FolderJobOptions | None = None,
    pool: ActorPool | None = None,
    address: str | None = None,
    options: DecodingOptions | None = None,
    video_options: VideoOptions | None = None,
    **keywords,
) -> RunSummary:
    """Caption images and videos with Ray Data: reading and preprocessing in Ray tasks,
    captioning in an actor pool. Reruns continue the output (there is no other way to run into a
    folder of shards): an input captioned with the same model, weights, runtime and options is
    skipped, a failed one retried.

    Args:
        source: A folder, a glob, a list of paths or URIs (``s3://``, ``gs://``, ``file://``,
            ``https://``, ...), a folder URI such as ``"s3://bucket/photos/"`` (its images, read
            by Ray tasks, subfolders included; records name them without the scheme), or a
            ``ray.data.Dataset`` with a ``path`` column and optionally ``bytes``, the encoded
            image (as ``ray.data.read_binary_files(..., include_paths=True)`` or Parquet give).
            Videos are captioned from local files.
        output: Folder for the JSONL or Parquet shards (created; reruns add shards).
        model: What each actor loads, once: an architecture name, hub id, checkpoint folder or ONNX
            export folder, or [`LoadOptions`][bliptk.captioning.runtimes.LoadOptions]; keywords of
            ``LoadOptions`` (``pretrained=False``, ``weights_seed``, ``dtype``, ``compile``:
            each actor compiles its image encoder) replace its fields.
        job: [`FolderJobOptions`][bliptk.captioning.options.FolderJobOptions]: ``batch_size``,
            ``recursive``, ``max_pixels``, ``format`` (``"jsonl"``, default, or ``"parquet"``); as
            keywords too.
        pool: The [`ActorPool`][bliptk.captioning.ray_data.ActorPool] (actors, CPUs and GPUs each); None sizes it to the cluster.
        address: A Ray cluster to connect to; None starts (or reuses) a local instance.
        options: [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] to start from.
        video_options: [`VideoOptions`][bliptk.core.video.VideoOptions] for the videos among the inputs.
        **keywords: Fields of any of these options that replace theirs.

    Returns:
        A [`RunSummary`][bliptk.captioning.ray_data.RunSummary].
    """
    ray = _ray()
    load, keywords = _load_options(model, keywords)
    job, keywords = job_options(job, keywords)
    format = job.format or "jsonl"
    if format not in SHARD_FORMATS:
        raise option_error(f"format must be one of {', '.join(SHARD_FORMATS)}, got {format!r}", "format")
    options, video_options = resolve_options(options, video_options, **keywords)
    described = runtimes.describe(load)  # the model's preprocessing and prompt, its weights left unloaded
    if options.prompt is None and described.prompt is not None:  # as the actors' captioner applies it
        options = replace(options, prompt=described.prompt)
    check_batch_options(options)
    pool = pool or ActorPool()
    # One job per output folder, claimed before Ray starts (the shards' writers are this job's tasks).
    with claim(output, folder=True, replace=True) as claimed:
        if not ray.is_initialized():
            with quiet_loggers("ray", "ray.data"):  # Ray's start-up notes, a wall of stderr in a notebook
                ray.init(
                    address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
                )
        recorded = record_options(options, video_options, job.scores)
        earlier = [r for r in read_output(claimed.path) if r["options"] == recorded]
        done = done_inputs(earlier, _provenance(load), recorded) if earlier else set()
        dataset, total, skipped, read_cpus = _todo(ray, source, job.recursive, done)
        if dataset is None:
            return RunSummary(total, skipped, 0, 0, str(claimed.path))
        num_workers, cpus_per_worker = pool.size(ray.cluster_resources(), read_cpus)
        logger.info("%d captioning actor(s) of %g CPU(s) and %g GPU(s)", num_workers, cpus_per_worker, pool.gpus_per_worker)
        actors = replace(load, threads=load.threads or math.ceil(cpus_per_worker)).as_dict()
        captioned = dataset.map(
            _preprocess, fn_kwargs={"preprocessor": described.preprocessor, "max_pixels": job.max_pixels}, num_cpus=TASK_CPUS
        ).map_batches(
            _CaptionActor,
            fn_constructor_args=(actors, options.as_dict(), video_options.as_dict(), job.scores),
            batch_size=job.batch_size,
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=cpus_per_worker,
            num_gpus=pool.gpus_per_worker or None,
            batch_format="numpy",
            zero_copy_batch=True,
        )
        with quiet_loggers("ray", "ray.data"):  # Ray Data's progress, logged line by line without a terminal
            written = _write(captioned, claimed.path, format)
    failed = sum(1 for r in written if r["error"])
    return RunSummary(total if total is not None else len(written), skipped, len(written) - failed, failed, str(claimed.path))


def _load_options(model: str | LoadOptions, keywords: dict) -> tuple[LoadOptions, dict]:
    """The job's [`LoadOptions`][bliptk.captioning.runtimes.LoadOptions]: ``model``, with the fields
    ``keywords`` name replaced; the other keywords left."""
    names = {f.name for f in fields(LoadOptions)} - {"model"}
    given = {name: value for name, value in keywords.items() if name in names}
    load = model if isinstance(model, LoadOptions) else LoadOptions(model=model)
    return replace(load, **given), {name: value for name, value in keywords.items() if name not in names}


def _todo(ray, source, recursive: bool, done: set[str]):
    """The dataset of inputs still to caption (None when there are none), how many inputs the
    source has (None when it is only known once read), how many are done, and the CPUs to keep
    for reading."""
    import ray.data

    read_cpus = READ_CPUS
    if isinstance(source, str) and "://" in source and not source.startswith(("http://", "https://")):
        # A folder or file in object storage (s3://, gs://, ...): Ray tasks list and read it.
        extensions = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)
        source = ray.data.read_binary_files(source, include_paths=True, file_extensions=extensions, num_cpus=TASK_CPUS)
    elif isinstance(source, ray.data.Dataset):
        read_cpus = 1.0  # the caller's reads ask for Ray Data's default of 1 CPU each: keep it free
    if isinstance(source, ray.data.Dataset):
        # A first run reads the source once, while captioning (every input gets a record, so the
        # records count it); only a rerun first goes over its paths to know what is left.
        if not done:
            return source, None, 0, read_cpus
        paths = [str(row["path"]) for row in source.select_columns(["path"]).take_all()]
        skipped = sum(input_identity(path) in done for path in paths)
        dataset = source.filter(lambda row: input_identity(str(row["path"])) not in done) if skipped < len(paths) else None
        return dataset, len(paths), skipped, read_cpus
    paths = expand_inputs([source] if isinstance(source, str | os.PathLike) else source, recursive)
    todo = [path for path in paths if path not in done]
    return (ray.data.from_items([{"path": path} for path in todo]) if todo else None), len(paths), len(paths) - len(todo), read_cpus


def _write(captioned, output: Path, format: str) -> list[dict]:
    """Run the pipeline into new shards of ``output``; their records."""
    output.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in output.iterdir()}
    write = captioned.write_json if format == "jsonl" else captioned.write_parquet
    write(str(output), ray_remote_args={"num_cpus": TASK_CPUS})
    new = sorted(p for p in output.iterdir() if p.name not in before)
    written = read_shards(new)
    logger.info("wrote %d records in %d shards", len(written), len(new))
    return written


def _provenance(load: LoadOptions) -> dict:
    """What the actors' records will say they were made with. The weights' fingerprint needs the
    weights, so the model is loaded here once (on a rerun only, to compare with earlier records),
    not compiled: the records say whether compiling was asked for, which the actors record alike."""
    captioner = runtimes.load(replace(load, compile=False))
    captioner.weights = replace(captioner.weights, compiled=load.compile)
    return captioner.provenance()
