"""Image-caption pairs for fine-tuning, from the formats users have: a JSONL file, COCO caption
annotations, a list of pairs, a ``datasets.Dataset``.

A bad row (a missing or unreadable image, an empty caption, a line that is no JSON object) is
counted and skipped when the data is read, never a crash mid-epoch; an image that still fails to
decode while training is left out of its batch, named and counted too. A file's image paths are the
user's own: absolute (``/data/coco/x.jpg``, ``~/x.jpg``, ``file:///data/x.jpg``) or relative to the
file's folder (or ``images=``), as the operating system reads them. Files are UTF-8 (a byte-order
mark is allowed); bytes that are not are an error naming the line.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
from PIL import Image

from ..core.errors import DataWarning, InputError, InvalidArgumentError
from ..core.preprocess import check_readable_file, load_image
from ..core.tokenizer import SEP_TOKEN_ID
from ..store.coco import coco_captions, coco_file_problem, is_coco_captions

__all__ = ["MAX_TEXT_TOKENS", "CaptionPairs", "SkippedRow", "read_pairs", "text_example"]

MAX_TEXT_TOKENS = 40
"""Decoder positions of a training text, ``[DEC]``, prompt, caption and ``[SEP]`` (BLIP's
``max_length=40``): a longer caption is cut, keeping its ``[SEP]``."""


@dataclass(frozen=True)
class SkippedRow:
    """A row left out of training.

    Attributes:
        where: The row: ``"train.jsonl line 3"``, ``"annotation 12"``, ``"pair 0"``.
        reason: Why, in a few words.
    """

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class CaptionPairs:
    """Images and their captions, the bad rows already left out.

    Attributes:
        images: Each row's image: a path, a PIL image or an array.
        captions: Each row's caption.
        source: What they were read from, for messages and ``finetune.json``.
        skipped: The rows left out, and why.
    """

    images: list
    captions: list[str]
    source: str
    skipped: list[SkippedRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    def fingerprint(self) -> str:
        """A sha256 (16 hex digits) of every row's image bytes (a file's content, an image's
        pixels) and caption, in order: what ``finetune.json`` records of the data."""
        digest = hashlib.sha256()
        for image, caption in zip(self.images, self.captions, strict=True):
            digest.update(_image_bytes(image))
            digest.update(caption.encode())
        return digest.hexdigest()[:16]

    def references(self) -> dict[str, list[str]]:
        """Every caption of each image, by image (the COCO metrics' references)."""
        grouped: dict[str, list[str]] = {}
        for image, caption in zip(self.images, self.captions, strict=True):
            grouped.setdefault(image_key(image), []).append(caption)
        return grouped


def read_pairs(data, images: str | os.PathLike | None = None, *, name: str = "train") -> CaptionPairs:
    """Read image-caption pairs.

    Args:
        data: A ``.jsonl`` file of ``{"image": path, "caption": text}`` lines; a ``.json`` of COCO
            caption annotations (``images`` with ``id`` and ``file_name``, ``annotations`` with
            ``image_id`` and ``caption``) or a list of ``{"file_name", "captions": [...]}`` (the
            Karpathy-test references' format); a list of ``(image, caption)`` pairs; or a
            ``datasets.Dataset`` with ``image`` and ``caption`` (or ``text``) columns.
        images: The folder a file's relative image paths are relative to (default: the file's own
            folder); absolute paths, ``~`` and ``file://`` URIs are read as they are.
        name: What the data is called in messages (``"train"``, ``"val"``).

    Returns:
        The pairs, with the rows left out in ``skipped`` (a [`DataWarning`][bliptk.core.errors.DataWarning] says how many).

    Raises:
        InputError: No usable row at all, or a file that cannot be read.
        InvalidArgumentError: Data of no known kind.
    """
    if images is not None and not Path(images).is_dir():
        raise InputError(
            images,
            "is not a folder; images= names the folder the data file's image paths are relative to",
            command_line={"images=": "--images"},
        )
    if isinstance(data, str | os.PathLike):
        pairs = _read_file(Path(data), None if images is None else Path(images))
    elif hasattr(data, "column_names") and hasattr(data, "__getitem__"):
        pairs = _read_dataset(data)
    elif isinstance(data, list | tuple):
        pairs = _checked(
            [(image, caption, f"pair {index}") for index, (image, caption) in enumerate(_as_pairs(data))], None, f"{len(data)} pairs"
        )
    else:
        raise InvalidArgumentError(
            f"{name} must be a .jsonl or COCO .json file, a list of (image, caption) pairs or a datasets.Dataset, not {type(data).__name__}"
        )
    if pairs.skipped:
        shown = "; ".join(str(row) for row in pairs.skipped[:3])
        warnings.warn(
            f"{name}: {len(pairs.skipped)} rows skipped ({shown}{'; ...' if len(pairs.skipped) > 3 else ''})", DataWarning, stacklevel=3
        )
    if not len(pairs):
        raise InputError(pairs.source, f"no usable image-caption pair for {name} ({len(pairs.skipped)} rows skipped)")
    return pairs


def _as_pairs(data) -> list:
    for index, row in enumerate(data):
        if not isinstance(row, list | tuple) or len(row) != 2:
            raise InvalidArgumentError(f"pair {index} is no (image, caption) pair: {row!r:.80}")
    return list(data)


def _read_file(path: Path, images: Path | None) -> CaptionPairs:
    if path.is_dir():
        raise InputError(path, "is a folder; training data is a .jsonl file of image-caption lines, or COCO caption annotations (.json)")
    check_readable_file(path, InputError)
    root = images if images is not None else path.parent
    text = _utf8_text(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows: list[tuple] = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            where = f"{path.name} line {number}"
            if not isinstance(row, dict) or "image" not in row or "caption" not in row:
                rows.append((None, None, where, 'no JSON object with "image" and "caption"'))
            else:
                rows.append((row["image"], row["caption"], where, None))
        return _checked(rows, root, path.name)
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(path, f"not JSON ({error}); training data is a .jsonl file or COCO caption annotations") from None
    return _checked(_annotation_rows(loaded, path), root, path.name)


def _utf8_text(path: Path) -> str:
    """A data file's text: UTF-8, a byte-order mark dropped (as Windows tools write it).

    Raises:
        InputError: Bytes that are not UTF-8, naming the line (never read as replacement characters).
    """
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise InputError(
            path, f"line {line} is not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); save the file as UTF-8"
        ) from None


def _annotation_rows(loaded, path: Path) -> list:
    """Rows of COCO annotations, or of the references format (one entry per image, all its captions)."""
    if is_coco_captions(loaded):
        problem = coco_file_problem(loaded, images_needed=True)
        if problem:
            raise InputError(path, problem)
        return [
            (a.file_name, a.caption, f"{path.name} annotation {a.index}", None if a.is_object else "not an object")
            for a in coco_captions(loaded)
        ]
    if isinstance(loaded, list) and all(isinstance(e, dict) and "file_name" in e and isinstance(e.get("captions"), list) for e in loaded):
        return [
            (entry["file_name"], caption, f"{path.name} image {entry['file_name']}", None)
            for entry in loaded
            for caption in entry["captions"]
        ]
    raise InputError(
        path,
        'neither COCO caption annotations (images and annotations) nor a list of {"file_name", "captions"}; '
        'a .jsonl file holds {"image", "caption"} lines',
    )


def _read_dataset(dataset) -> CaptionPairs:
    text = "caption" if "caption" in dataset.column_names else "text"
    if "image" not in dataset.column_names or text not in dataset.column_names:
        raise InvalidArgumentError(f"a datasets.Dataset needs image and caption (or text) columns, has {dataset.column_names}")
    return _checked(
        [(row["image"], row[text], f"row {index}") for index, row in enumerate(dataset)], None, f"a Dataset of {len(dataset)} rows"
    )


def _checked(rows: list, root: Path | None, source: str) -> CaptionPairs:
    """Keep the rows whose caption is text and whose image opens; count the others."""
    pairs = CaptionPairs([], [], source)
    for row in rows:
        image, caption, where, reason = row if len(row) == 4 else (*row, None)
        reason = reason or _caption_problem(caption) or _image_problem(image, root)
        if reason:
            pairs.skipped.append(SkippedRow(where, reason))
            continue
        pairs.images.append(_resolved(image, root) if isinstance(image, str | os.PathLike) else image)
        pairs.captions.append(caption.strip())
    return pairs


def _caption_problem(caption) -> str | None:
    if not isinstance(caption, str):
        return f"the caption is {type(caption).__name__}, not text"
    return "an empty caption" if not caption.strip() else None


def _resolved(image, root: Path | None) -> Path:
    """A path as the operating system reads it: ``file://`` URIs and ``~`` resolved, absolute as
    given, relative to ``root`` (the data file's folder, or ``images=``)."""
    text = os.fspath(image)
    if isinstance(text, str) and text.startswith("file://"):
        text = url2pathname(urlparse(text).path)
    path = Path(text).expanduser()
    return path if root is None or path.is_absolute() else root / path


def _image_problem(image, root: Path | None) -> str | None:
    if image is None:
        return "no image"
    if isinstance(image, Image.Image | np.ndarray) or hasattr(image, "shape"):
        return None
    if not isinstance(image, str | os.PathLike):
        return f"the image is {type(image).__name__}, not a path or an image"
    path = _resolved(image, root)
    if path.is_dir():
        return f"{path} is a folder, not an image"
    if not path.is_file():
        return f"{path} is missing"
    try:
        with Image.open(path) as opened:
            opened.verify()
    except Exception as error:  # noqa: BLE001 (PIL raises many kinds; each is this row's problem)
        return f"{path} is no readable image ({type(error).__name__})"
    return None


def _image_bytes(image) -> bytes:
    if isinstance(image, Path):
        return image.read_bytes()
    return np.asarray(load_image(image)).tobytes()


def image_key(image) -> str:
    """What identifies an image among the references: its path, or a hash of its pixels."""
    return str(image) if isinstance(image, Path) else hashlib.sha256(_image_bytes(image)).hexdigest()[:16]


def text_example(tokenizer, prompt: str, caption: str) -> tuple[list[int], list[int]]:
    """Decoder input ids and labels of one caption, BLIP's rule.

    ``[DEC]`` and the prompt's tokens are labelled -100 (not learned), the caption's tokens and
    its ``[SEP]`` are learned; ``transformers`` shifts the labels by one inside its loss.

    Returns:
        ``(input_ids, labels)``, at most [`MAX_TEXT_TOKENS`][bliptk.training.data.MAX_TEXT_TOKENS] long.
    """
    prompt_ids = tokenizer.encode(prompt)
    caption_ids = tokenizer.encode(caption)[1:][: max(0, MAX_TEXT_TOKENS - len(prompt_ids) - 1)]
    ids = prompt_ids + caption_ids + [SEP_TOKEN_ID]
    return ids, [-100] * len(prompt_ids) + caption_ids + [SEP_TOKEN_ID]
