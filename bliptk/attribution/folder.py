"""Explaining whole folders: one record per input and one saved explanation per record, resumable.

An explanation job writes into a folder of its own: ``explanations.jsonl``, the records
([`bliptk.store.records`][bliptk.store.records]: the caption explained, its tokens, the model, weights
and options, method and layer among them, or the input's error), and ``maps/``, one saved
explanation per record ([`bliptk.attribution.result`][bliptk.attribution.result]), named in the
record's ``maps``. A map is written whole before its record, so a killed run leaves no record
without its map; its name comes from the input and how it was made, so a rerun writes a map it
lost over the one the killed run left. ``resume=True`` skips the inputs explained the same way
(and whose map is still there); two jobs on one folder are refused (the records file's lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

from ..captioning.folder import BatchStatus, Prepared, batches, check_batch_options, expand_inputs, resume_output
from ..captioning.options import FolderJobOptions, job_options
from ..core import pipeline
from ..core.decoding import prompt_ids
from ..core.errors import InputError, OutputError, option_error
from ..store.outputs import checked_output, write_whole
from ..store.records import RecordOutput, input_error, key_of, make_record, read_records, record_options
from .explanation import ExplainRequest, Explanation, explain_visuals, explained_targets, explanation_request
from .passes import visual_input
from .result import MapFileOptions, load_explanation, write_explanation

__all__ = ["MAPS_FOLDER", "RECORDS_FILE", "ExplanationOutput", "FolderFile", "explain_files", "job_record_options", "load_explanations"]

RECORDS_FILE = "explanations.jsonl"
"""The records file of an explanation job's folder."""
MAPS_FOLDER = "maps"
"""The folder of its saved explanations."""


class ExplanationOutput:
    """An explanation job's folder, claimed: created if missing, its records file opened (locked,
    checked, read back with ``resume``) before any model loads.

    Args:
        folder: The folder (its parent must exist).
        resume: Continue it (else a folder that holds records is an error).

    Raises:
        OutputExistsError: The folder holds records and ``resume`` is False.
        OutputLockedError: Another process writes it.
        OutputError: It cannot be written (a file, a folder that does not exist above it).
    """

    def __init__(self, folder: str | os.PathLike, resume: bool = False):
        self.folder = checked_output(folder, folder=True, replace=True)
        try:
            self.folder.mkdir(exist_ok=True)
            (self.folder / MAPS_FOLDER).mkdir(exist_ok=True)
        except OSError as problem:
            raise OutputError(f"{folder}: cannot make the folder ({problem.strerror or problem}); choose another output") from None
        self.records = RecordOutput(self.folder / RECORDS_FILE, "jsonl", resume)
        for stale in (self.folder / MAPS_FOLDER).glob(".*.tmp.*"):  # what a killed run was writing (the lock is ours now)
            with contextlib.suppress(OSError):
                stale.unlink()

    @property
    def existing(self) -> list[dict]:
        return self.records.existing

    def write(self, record: dict, explanation: Explanation | None, options: MapFileOptions) -> dict:
        """Write an explanation's map file whole, then its record (with ``maps`` naming the file)."""
        if explanation is not None:
            name = f"{MAPS_FOLDER}/{_map_name(record)}.{options.map_format}"
            write_whole(self.folder / name, lambda path: write_explanation(explanation, path, options.map_dtype, options.map_format))
            record = {**record, "maps": name}
        self.records.write(record)
        return record

    def file(self, name: str) -> FolderFile:
        """Another file of the folder (a summary's figure), written whole while the folder is held."""
        return FolderFile(self.folder / name)

    def close(self) -> None:
        self.records.close()

    def __enter__(self) -> ExplanationOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FolderFile:
    """A file of a held explanation folder: ``write(fn)`` writes it whole (``fn(path)`` fills a
    temporary file that then replaces it), as an [`Output`][bliptk.store.outputs.Output] does."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, write) -> Path:
        write_whole(self.path, write)
        return self.path


def _map_name(record: dict) -> str:
    """A map file's name: the input's name (its safe characters) and a hash of how it was made."""
    made = hashlib.sha256(json.dumps(key_of(record), sort_keys=True).encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(record["path"]).stem)[:40].lstrip(".")
    return f"{stem}-{made}"


def explain_files(
    captioner,
    inputs,
    out: str | os.PathLike | ExplanationOutput,
    *,
    method: str = "gradcam",
    layer: int | None = None,
    prompt: str | None = None,
    contrast: dict | None = None,
    job: FolderJobOptions | None = None,
    maps: MapFileOptions | None = None,
    progress: bool | None = None,
    status: BatchStatus | None = None,
    **keywords,
) -> Iterator[dict]:
    """Explain many files: each input captioned and its caption explained by a method, one record
    and one saved explanation per input, yielded as they are written.

    The images of a batch are read ahead, encoded and captioned together, and explained together by
    a method that batches (Grad-CAM). A bad input gets an error record and never stops the job;
    Ctrl-C stops after the batch in flight; ``resume=True`` continues a folder, skipping inputs
    explained the same way and retrying failures.

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner] (any runtime's for a black-box method).
        inputs: Files, folders (their image and video files) and glob patterns, or one of them.
        out: The job's folder (see [`bliptk.attribution.folder`][bliptk.attribution.folder]), or an
            [`ExplanationOutput`][bliptk.attribution.folder.ExplanationOutput] already opened.
        method: The method, as [`explain()`][bliptk.attribution.explanation.explain] takes it.
        layer: Its decoder layer, as ``explain`` takes it.
        prompt: The prompt of the captions made.
        contrast: As ``explain`` takes it; it applies to the captions it fits (the others are
            explained plainly).
        job: [`FolderJobOptions`][bliptk.captioning.options.FolderJobOptions]: ``recursive``,
            ``batch_size`` (8), ``workers``, ``max_pixels``, ``resume`` (each a keyword too).
        maps: [`MapFileOptions`][bliptk.attribution.result.MapFileOptions]: ``map_dtype``,
            ``map_format`` (each a keyword too).
        progress: A ``tqdm`` bar (None: when there is more than one batch).
        status: A [`BatchStatus`][bliptk.captioning.folder.BatchStatus] to keep counts in.
        **keywords: The method's own options, decoding options of the captions made, video options.

    Yields:
        Records (see [`Record`][bliptk.store.records.Record]): ``caption``, ``tokens`` and ``token_ids``
        explained, ``options`` (the decoding options, ``method``, ``layer``, the method's options,
        ``contrast``, the map files' format), ``maps`` (the saved explanation, relative to the
        folder), or ``error``.

    Raises:
        InvalidOptionError, NoInputsError, OutputExistsError, OutputLockedError, OutputError:
            Before any work.
    """
    job, keywords = job_options(job, keywords)
    if job.scores or job.format not in (None, "jsonl"):
        raise option_error("an explanation job writes JSONL records and its maps; scores and format apply to captioning", "format")
    request, options, video_options, map_options = _job_request(captioner, method, layer, prompt, contrast, maps, keywords)
    check_batch_options(options)
    prompt_text = options.prompt_text if request.prompt is None else request.prompt  # checked against the decoder's positions
    prompt_ids(captioner.tokenizer, prompt_text, options.max_new_tokens, captioner.max_positions)
    given = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    _refuse_input_folder(out, given, job.recursive)
    paths = expand_inputs(given, job.recursive)
    output = out if isinstance(out, ExplanationOutput) else ExplanationOutput(out, job.resume)
    try:
        run = _ExplainJob(captioner, request, options, video_options, map_options, status or BatchStatus())
        run.status.total = len(paths)
        todo = run.resume(output, paths)
        pipeline.say_if_random(captioner)
        yield from run.run(todo, output, job, progress)
    finally:
        if output is not out:
            output.close()


def _job_request(captioner, method, layer, prompt, contrast, maps: MapFileOptions | None, keywords: dict):
    """An explanation job's request, decoding and video options, and map files' options, checked."""
    map_options = replace(maps or MapFileOptions(), **{f.name: keywords.pop(f.name) for f in fields(MapFileOptions) if f.name in keywords})
    request = explanation_request(captioner, method, layer, prompt, contrast, keywords)
    options, video_options = pipeline.resolve_options(**request.decoding_options)
    return request, pipeline.own_options(captioner, options), video_options, map_options


def job_record_options(
    captioner, *, method: str = "gradcam", layer=None, prompt=None, contrast=None, maps: MapFileOptions | None = None, **keywords
) -> dict:
    """The ``options`` the records of ``explain_files(captioner, ..., **the same)`` carry: to read
    one job's explanations back from a folder (``load_explanations(folder, options)``)."""
    request, options, video_options, map_options = _job_request(captioner, method, layer, prompt, contrast, maps, dict(keywords))
    return explanation_options(request, options, video_options, map_options)


def _refuse_input_folder(out, inputs: list, recursive: bool) -> None:
    """An explanation job's folder is its own: not a folder whose images it explains, nor (with
    ``recursive``) one inside it (its summaries would be read as inputs by the next run)."""
    folder = Path(os.path.realpath(out.folder if isinstance(out, ExplanationOutput) else out))
    for given in inputs:
        if not isinstance(given, str | os.PathLike) or not Path(given).is_dir():
            continue
        source = Path(os.path.realpath(given))
        if folder == source or (recursive and folder.is_relative_to(source)):
            where = "the folder of the inputs" if folder == source else "inside the folder of the inputs, which recursive reads"
            raise OutputError(f"{out} is {where}; write the explanations into a folder of their own (--out explanations/)")


def explanation_options(request: ExplainRequest, options, video_options, maps: MapFileOptions) -> dict:
    """The ``options`` of an explanation record: the decoding and video options, the method, its
    layer and options, the contrast asked for, and how the maps are saved."""
    contrast = [[key, foil] for key, foil in request.contrast.items()]  # pairs: an index stays an int, a token a string
    settings = {f.name: getattr(request.settings, f.name) for f in fields(request.settings)}  # type: ignore[arg-type]
    return {
        **record_options(options, video_options),
        "method": request.method.name,
        "layer": request.layer,
        **settings,
        **({"contrast": contrast} if contrast else {}),
        "map_dtype": maps.map_dtype,
        "map_format": maps.map_format,
    }


class _ExplainJob:
    """One explanation run: its captioner, request, options and counts."""

    def __init__(self, captioner, request: ExplainRequest, options, video_options, maps: MapFileOptions, status: BatchStatus):
        self.captioner, self.request, self.options, self.video_options, self.maps = captioner, request, options, video_options, maps
        self.status = status
        self.provenance = pipeline.provenance(captioner)
        self.record_options = explanation_options(request, options, video_options, maps)

    def resume(self, output: ExplanationOutput, paths: list[str]) -> list[str]:
        """Keep the folder's records but this job's failures (tried again); leave out the inputs
        explained the same way whose map is still there."""
        existing = [r for r in output.existing if r.get("error") or _map_file(output.folder, r) is not None]
        return resume_output(output.records, existing, paths, self.provenance, self.record_options, self.status)

    def run(self, paths: list[str], output: ExplanationOutput, job: FolderJobOptions, progress) -> Iterator[dict]:
        for batch in batches(paths, job, self.captioner.preprocessor, self.status, progress, "explaining"):
            for item, explanation, error in self.explained(batch):
                yield output.write(self.record(item, explanation, error), explanation, self.maps)

    def explained(self, batch: list[Prepared]) -> list[tuple[Prepared, Explanation | None, Exception | dict | None]]:
        """Each input of a batch with its explanation or error: read ones explained together; when
        that fails, each alone, so that one input's failure is its own record."""
        import torch

        from .passes import Visual

        results: dict[int, tuple[Explanation | None, Exception | dict | None]] = {}
        readable: list[tuple[Prepared, Visual]] = []
        for item in batch:
            if item.error is not None:
                results[id(item)] = (None, item.error)
                continue
            try:
                source = item.path if item.kind == "video" else None
                visual = (
                    visual_input(self.captioner, source, self.video_options)
                    if source
                    else Visual(torch.from_numpy(item.pixels)[None], video=False)
                )
                readable.append((item, visual))
            except Exception as error:  # an input must never end the job
                results[id(item)] = (None, input_error(error, item.path, item.kind))
        if len(readable) > 1:
            with contextlib.suppress(Exception):  # the batch failed: each input alone, below, says why
                explanations = self.explain([visual for _, visual in readable], [item.path for item, _ in readable])
                results.update({id(item): (explanation, None) for (item, _), explanation in zip(readable, explanations, strict=True)})
        for item, visual in readable:
            if id(item) not in results:
                try:
                    results[id(item)] = (self.explain([visual], [item.path])[0], None)
                except Exception as error:
                    results[id(item)] = (None, input_error(error, item.path, item.kind))
        return [(item, *results[id(item)]) for item in batch]

    def explain(self, visuals, sources: list[str]) -> list[Explanation]:
        targets = explained_targets(
            self.captioner, visuals, [None] * len(visuals), self.request, self.options, False, len(visuals), required=False
        )
        return explain_visuals(self.captioner, visuals, targets, self.request, sources, len(visuals))

    def record(self, item: Prepared, explanation: Explanation | None, error) -> dict:
        said = None
        if explanation is not None:
            said = SimpleNamespace(
                text=explanation.text, token_ids=explanation.token_ids, tokens=explanation.tokens, logprobs=None, finished=None
            )
        record = make_record(item.path, item.kind, self.provenance, self.record_options, said, error)
        if error is not None:
            self.status.failed += 1
            self.status.failures.append(record)
        else:
            self.status.captioned += 1
        return record


def load_explanations(folder: str | os.PathLike, options: dict | None = None) -> list[Explanation]:
    """The saved explanations of an explanation job's folder, in its records' order (failed inputs
    have none). A record's ``maps`` must name a file inside the folder.

    Args:
        folder: The job's folder.
        options: Only the records made with these options (a record's ``options``, as
            ``explain_files`` writes them): one job's, in a folder resumed with other options.

    Raises:
        InputError: No explanation job's folder, a record naming a file outside it, a map file
            that is missing or broken.
    """
    root = Path(folder)
    records_file = root / RECORDS_FILE
    if not records_file.is_file():
        raise InputError(
            root, f"no {RECORDS_FILE}: not the folder of an explanation job (bliptk.explain_files, bliptk explain FOLDER --out)"
        )
    explanations = []
    for record in read_records(records_file, "jsonl"):
        if record.get("error") or not record.get("maps") or (options is not None and record["options"] != options):
            continue
        path = _map_file(root, record)
        if path is None:
            raise InputError(records_file, f"a record names {record['maps']!r}, outside the folder or missing: its maps are not read")
        explanations.append(load_explanation(path))
    return explanations


def _map_file(folder: Path, record: dict) -> Path | None:
    """A record's map file, where it is one inside the folder; else None."""
    name = record.get("maps")
    if not isinstance(name, str) or Path(name).is_absolute():
        return None
    path = (folder / name).resolve()
    return path if path.is_relative_to(folder.resolve()) and path.is_file() else None
