"""Captioning on a Ray cluster through Ray Data.

bliptk grows no scheduler of its own: :func:`caption_dataset` builds a Ray Data pipeline in which
Ray tasks read and preprocess images and an actor pool captions them, each actor loading the
captioner once. Records have the schema of the batch command (:mod:`bliptk.batch`) and go to
JSONL or Parquet shards in an output folder; a rerun skips the inputs already captioned with the
same model and options. Ray is optional (``pip install 'bliptk[ray]'``); importing bliptk never
imports it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batch import expand_inputs
from .records import done_inputs, error_summary, input_error, input_identity, key_of, make_record
from .decoding import DecodingOptions, options_with
from .errors import InvalidOptionError, MissingDependencyError, check_positive_int
from .files import IMAGE_EXTENSIONS
from .models import find_model_spec
from .preprocess import DEFAULT_MAX_PIXELS, Preprocessor, load_image

__all__ = ["RunSummary", "caption_dataset", "read_output"]

logger = logging.getLogger(__name__)

SHARD_FORMATS = ("jsonl", "parquet")


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("distributed captioning needs Ray: pip install 'bliptk[ray]'") from None
    return ray


@dataclass(frozen=True)
class RunSummary:
    """What a :func:`caption_dataset` run did.

    Attributes:
        total: Inputs in the source.
        skipped: Inputs already captioned in the output (same model and options).
        captioned: Inputs captioned in this run.
        failed: Inputs that got an error record in this run.
        output: The output folder.
    """

    total: int
    skipped: int
    captioned: int
    failed: int
    output: str


def read_output(output) -> list[dict]:
    """The records in an output folder's JSONL and Parquet shards, one per input and way of making
    it (model, weights, options): an input that failed and was captioned on a rerun has only its
    caption; one that failed on every run has its latest failure."""
    folder = Path(output)
    if not folder.is_dir():
        return []
    latest: dict[tuple, dict] = {}
    for record in _read_shards(sorted(folder.iterdir(), key=lambda shard: (shard.stat().st_mtime_ns, shard.name))):
        key = key_of(record)
        if key not in latest or latest[key]["error"]:
            latest[key] = record
    return list(latest.values())


def _read_shards(shards: list[Path]) -> list[dict]:
    records: list[dict] = []
    for shard in shards:
        if ".json" in shard.name:
            for line in shard.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(_decode_record(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s: dropping a torn line", shard)
        elif shard.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(shard)
            except Exception as error:  # a shard cut short by a killed job: its inputs are captioned again
                logger.warning("%s: skipping an unreadable shard (%s)", shard, error)
                continue
            records.extend(_decode_record(row) for row in table.to_pylist())
    return records


_JSON_COLUMNS = ("weights", "options", "error")


def _encode_record(record: dict) -> dict:
    # Weights, options and errors travel as JSON text so that every shard has one flat, stable schema.
    return {**record, **{name: json.dumps(record[name], sort_keys=True) if record[name] is not None else "" for name in _JSON_COLUMNS}}


def _decode_record(row: dict) -> dict:
    return {**row, **{name: json.loads(row[name]) if row.get(name) else None for name in _JSON_COLUMNS}}


def _preprocessor(model: str) -> Preprocessor:
    """The preprocessing ``load(model)`` uses, without loading the model: the registry's
    checkpoints use BLIP's (their ``preprocessor_config.json`` holds its defaults), a checkpoint
    folder its own ``preprocessor_config.json``; a hub id outside the registry gets BLIP's."""
    from .loading import preprocessor_for

    spec = find_model_spec(model)
    if spec is not None:
        return Preprocessor(spec.image_size)
    folder = Path(model).expanduser()
    config = folder / "config.json"
    if config.is_file():
        return preprocessor_for(folder, json.loads(config.read_text())["vision_config"].get("image_size", 384))
    return Preprocessor()


# CPUs kept beside the captioning actors for reading, preprocessing and writing tasks: half for
# the reads and half for the writes, so that records are written while captioning goes on.
READ_CPUS = 0.5
TASK_CPUS = READ_CPUS / 2


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
    """Ray task: a row with ``path`` (and optionally ``bytes``) -> pixels, or the input's error
    (JSON ``{"type", "message"}``) in ``failure``."""
    import io

    from PIL import Image

    path = str(row["path"])
    try:
        if row.get("bytes") is not None:
            source = Image.open(io.BytesIO(row["bytes"]))
        elif "://" in path:
            source = Image.open(io.BytesIO(_read_bytes(path)))
        else:
            source = path
        pixels = preprocessor.array(load_image(source, max_pixels=max_pixels))
        return {"path": path, "pixels": pixels, "failure": ""}
    except Exception as error:  # an input must never fail the job
        failure = json.dumps(error_summary(input_error(error, path)))
    empty = np.zeros((3, preprocessor.image_size, preprocessor.image_size), dtype=np.float32)
    return {"path": path, "pixels": empty, "failure": failure}


class _CaptionActor:
    """Ray actor: loads the captioner once, captions batches of preprocessed images."""

    def __init__(self, model: str, pretrained: bool, seed: int, dtype, threads: int, options: dict, record_options: dict):
        import torch

        from .loading import load

        torch.set_num_threads(threads)
        self.captioner = load(model, pretrained=pretrained, dtype=dtype, seed=seed)
        self.options = options_with(**options)
        self.record_options = record_options

    def __call__(self, batch: dict) -> dict:
        import torch

        failures = list(batch["failure"])
        good = [i for i, failure in enumerate(failures) if not failure]
        captions = {}
        if good:
            pixels = torch.from_numpy(np.stack([batch["pixels"][i] for i in good]))
            decoded = self.captioner.caption_features(self.captioner.image_encoder(pixels), self.options)
            captions = dict(zip(good, decoded))
        provenance = self.captioner.provenance()
        records = []
        for i, (path, failure) in enumerate(zip(batch["path"], failures)):
            records.append(make_record(str(path), "image", provenance, self.record_options, captions.get(i), json.loads(failure) if failure else None))
        return _arrow_table([_encode_record(record) for record in records])


def _arrow_table(records: list[dict]):
    """Records as an Arrow table with one fixed schema (so every shard reads back alike)."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("path", pa.string()), ("kind", pa.string()), ("caption", pa.string()), ("token_ids", pa.list_(pa.int64())),
            ("tokens", pa.list_(pa.string())), ("logprobs", pa.list_(pa.float64())), ("finished", pa.bool_()),
            ("model", pa.string()), ("weights", pa.string()), ("options", pa.string()), ("error", pa.string()),
        ]
    )
    return pa.Table.from_pylist(records, schema=schema)


def caption_dataset(
    source,
    *,
    output,
    model: str = "ViT-L/16",
    pretrained: bool = True,
    weights_seed: int = 0,
    dtype=None,
    num_workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float = 0,
    batch_size: int = 8,
    format: str = "jsonl",
    recursive: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    address: str | None = None,
    options: DecodingOptions | None = None,
    **decoding_options,
) -> RunSummary:
    """Caption images with Ray Data: preprocessing in Ray tasks, captioning in an actor pool.

    Args:
        source: A folder, a glob, a list of paths or URIs (``s3://``, ``gs://``, ``file://``,
            ``https://``, ...), a folder URI such as ``"s3://bucket/photos/"`` (its images, read
            by Ray tasks, subfolders included; records name them without the scheme), or a
            ``ray.data.Dataset`` with a ``path`` column and optionally ``bytes``, the encoded
            image (as ``ray.data.read_binary_files(..., include_paths=True)`` or Parquet give).
        output: Folder for the JSONL or Parquet shards (created; reruns add shards).
        model: Architecture name, hub id or checkpoint folder, loaded once per actor.
        pretrained: False for random weights (tests, benchmarks).
        weights_seed: Seed of random weights (``seed`` is the decoding option).
        dtype: Model dtype (``"bfloat16"`` for throughput on CPUs that support it).
        num_workers: Captioning actors. None: with ``gpus_per_worker`` one per share of the
            cluster's GPUs, else as many as fit beside half a CPU kept for the reading tasks
            (at least 1).
        cpus_per_worker: CPUs each actor requests; it runs that many torch threads, rounded up.
            None: 1 with GPUs, else ``min(4, CPUs - 0.5)``, so that a small machine gives its
            one actor all but the reading share and a large one runs actors of 4 CPUs.
        gpus_per_worker: GPUs each actor requests.
        batch_size: Images per captioning batch.
        format: ``"jsonl"`` or ``"parquet"``.
        recursive: Look in subfolders of folders.
        max_pixels: Refuse larger images (decompression bombs).
        address: A Ray cluster to connect to; None starts (or reuses) a local instance.
        options: :class:`~bliptk.DecodingOptions` to start from.
        **decoding_options: Fields of :class:`~bliptk.DecodingOptions` that replace those of
            ``options``.

    Returns:
        A :class:`RunSummary`.
    """
    ray = _ray()
    if format not in SHARD_FORMATS:
        raise InvalidOptionError(f"format must be one of {', '.join(SHARD_FORMATS)}, got {format!r}")
    check_positive_int("batch_size", batch_size)
    if cpus_per_worker is not None and not cpus_per_worker > 0:
        raise InvalidOptionError(f"cpus_per_worker must be > 0, got {cpus_per_worker!r}")
    if num_workers is not None:
        check_positive_int("num_workers", num_workers)
    options = options_with(options, **decoding_options)
    if options.num_return_sequences != 1:
        raise InvalidOptionError("caption_dataset writes one caption per input: num_return_sequences must be 1")
    record_options = {**options.as_dict(), "num_frames": 16, "pooling": "mean"}
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    import ray.data

    # Done: the inputs captioned with this model, weights and options (failures are retried).
    earlier = [r for r in read_output(output) if r["model"] == _model_name(model) and r["options"] == record_options]
    done = done_inputs(earlier, _provenance(model, pretrained, weights_seed, dtype), record_options) if earlier else set()
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
        total, skipped, dataset = None, 0, source
        if done:
            paths = [str(row["path"]) for row in source.select_columns(["path"]).take_all()]
            total, skipped = len(paths), sum(input_identity(path) in done for path in paths)
            dataset = source.filter(lambda row: input_identity(str(row["path"])) not in done)
    else:
        paths = expand_inputs([source] if isinstance(source, (str, os.PathLike)) else source, recursive)
        todo = [path for path in paths if path not in done]
        total, skipped = len(paths), len(paths) - len(todo)
        dataset = ray.data.from_items([{"path": path} for path in todo]) if todo else None
    if skipped == total:
        return RunSummary(total, skipped, 0, 0, str(output))

    num_workers, cpus_per_worker = _pool_size(ray.cluster_resources(), num_workers, cpus_per_worker, gpus_per_worker, read_cpus)
    logger.info("%d captioning actor(s) of %g CPU(s) and %g GPU(s)", num_workers, cpus_per_worker, gpus_per_worker)
    captioned = (
        dataset.map(
            _preprocess,
            fn_kwargs={"preprocessor": _preprocessor(model), "max_pixels": max_pixels},
            num_cpus=TASK_CPUS,
        )
        .map_batches(
            _CaptionActor,
            fn_constructor_args=(model, pretrained, weights_seed, dtype, math.ceil(cpus_per_worker), options.as_dict(), record_options),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker or None,
            batch_format="numpy",
            zero_copy_batch=True,
        )
    )
    Path(output).mkdir(parents=True, exist_ok=True)
    before = {p.name for p in Path(output).iterdir()}
    write = captioned.write_json if format == "jsonl" else captioned.write_parquet
    write(str(output), ray_remote_args={"num_cpus": TASK_CPUS})
    new = sorted(p for p in Path(output).iterdir() if p.name not in before)
    written = _read_shards(new)
    failed = sum(1 for r in written if r["error"])
    logger.info("wrote %d records in %d shards", len(written), len(new))
    total = total if total is not None else len(written)
    return RunSummary(total, skipped, len(written) - failed, failed, str(output))


def _pool_size(
    resources: dict, num_workers: int | None, cpus_per_worker: float | None, gpus_per_worker: float, read_cpus: float = READ_CPUS
) -> tuple[int, float]:
    """(actors, CPUs per actor) for a cluster with ``resources``: the actors leave ``read_cpus``
    to the reading tasks (on 2 CPUs, two 1-CPU actors starve the reads and the job hangs)."""
    cpus = float(resources.get("CPU", 1))
    free = max(0.5, cpus - read_cpus)
    if cpus_per_worker is None:
        cpus_per_worker = 1.0 if gpus_per_worker else min(4.0, free / (num_workers or 1))
    if num_workers is None:
        gpus = float(resources.get("GPU", 0))
        if gpus_per_worker and gpus:
            num_workers = max(1, int(gpus / gpus_per_worker))
        else:
            num_workers = max(1, int(free // cpus_per_worker))
    if num_workers * cpus_per_worker > free:
        logger.warning(
            "%d actors of %g CPUs need more than the %g CPUs this cluster has beside the reading tasks: "
            "the job waits until the cluster grows", num_workers, cpus_per_worker, free,
        )
    return num_workers, cpus_per_worker


def _provenance(model: str, pretrained: bool, seed: int, dtype) -> dict:
    """What the actors' records will say they were made with. The weights' fingerprint needs the
    weights, so the model is loaded here once (on a rerun only, to compare with earlier records)."""
    from .loading import load

    return load(model, pretrained=pretrained, seed=seed, dtype=dtype, device="cpu").provenance()


def _model_name(model: str) -> str:
    spec = find_model_spec(model)
    return spec.name if spec is not None else str(model)
