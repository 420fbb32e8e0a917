"""How a folder job runs, one options object shared by [`caption_files()`][bliptk.captioning.folder.caption_files],
[`caption_dataset()`][bliptk.captioning.ray_data.caption_dataset] and ``bliptk caption``, whose flags
are built from its fields."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..core.errors import check_positive_int, option_error
from ..core.preprocess import DEFAULT_MAX_PIXELS
from ..store.formats import FORMATS

__all__ = ["FolderJobOptions", "job_options"]


@dataclass(frozen=True, kw_only=True)
class FolderJobOptions:
    """How a job over many files runs.

    Attributes:
        recursive: Look in subfolders of folders (and let ``**`` match in patterns).
        batch_size: Inputs captioned together.
        workers: Threads that read and preprocess the next images while the model works (0: none;
            a Ray job reads in Ray tasks).
        max_pixels: Refuse images with more pixels than this (decompression bombs).
        resume: Continue an existing output, skipping inputs captioned with the same model, weights,
            runtime and options (without it, an existing output is an error).
        format: The output's format (see [`bliptk.store.formats`][bliptk.store.formats]); None: a
            records file's by its extension, a Ray job's shards JSONL.
        scores: Add each generated token's entropy to its record (``entropy``, beside
            ``logprobs``): how sure the model was at each step. Records say so in their options.

    Each field's ``metadata`` holds its command-line help, from which ``bliptk caption`` builds its
    flags.
    """

    recursive: bool = field(default=False, metadata={"help": "look in subfolders too"})
    batch_size: int = field(default=8, metadata={"help": "inputs captioned together"})
    workers: int = field(default=2, metadata={"help": "threads reading and preprocessing images ahead; 0 for none"})
    max_pixels: int | None = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "refuse larger images"})
    resume: bool = field(
        default=False, metadata={"help": "continue --out: skip inputs done with the same model and options, retry failures"}
    )
    format: str | None = field(
        default=None,
        metadata={"help": "format of --out (default: by its extension; jsonl with --ray)", "choices": lambda: tuple(FORMATS)},
    )
    scores: bool = field(default=False, metadata={"help": "add each token's entropy to its record, beside its log-probability"})

    def __post_init__(self):
        check_positive_int("batch_size", self.batch_size)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise option_error(f"workers must be an integer >= 0, got {self.workers!r}", "workers")
        if self.max_pixels is not None:
            check_positive_int("max_pixels", self.max_pixels)
        for name in ("recursive", "resume", "scores"):
            if not isinstance(getattr(self, name), bool):
                raise option_error(f"{name} must be True or False, got {getattr(self, name)!r}", name)


def job_options(job: FolderJobOptions | None, keywords: dict) -> tuple[FolderJobOptions, dict]:
    """``job`` (or the defaults) with the fields ``keywords`` name replaced; the other keywords
    (decoding and video options) left for the caller."""
    from dataclasses import replace

    names = {f.name for f in fields(FolderJobOptions)}
    mine = {name: value for name, value in keywords.items() if name in names}
    return replace(job or FolderJobOptions(), **mine), {name: value for name, value in keywords.items() if name not in names}
