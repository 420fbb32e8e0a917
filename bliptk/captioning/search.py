"""Search images by caption likelihood: how likely the model finds the query as each image's
caption (its mean log-probability per token, teacher-forced:
[`CaptionBackend.score()`][bliptk.captioning.backend.CaptionBackend.score]). Captioning checkpoints
have no retrieval heads (ITM, ITC), so this is the search they can do, with no other weights.

An image is encoded once: its features are kept for the captioner in memory (for the process's
life) and, when asked, in a cache file, so that the second and later queries over the same images
cost only the decoder. A cache file records how its features were made (model, weights, runtime,
preprocessing) and is refused by any other captioner.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from ..core.decoding import DecodingOptions
from ..core.errors import (
    DataWarning,
    ImageLoadError,
    InputError,
    InvalidArgumentError,
    InvalidOptionError,
    VideoLoadError,
    check_positive_int,
)
from ..core.pipeline import encode_images, encode_video, own_options, request_prompt, say_if_random
from ..core.scoring import caption_ids, score_features
from ..core.video import VideoOptions, is_video
from ..store.outputs import claim
from .folder import expand_inputs

__all__ = ["FeatureCache", "SearchHit", "search"]

CACHE_FORMAT = "bliptk image features"


@dataclass(frozen=True)
class SearchHit:
    """One image a search found.

    Attributes:
        path: The image file.
        score: The mean log-probability per token of the query as its caption (``[SEP]``
            included): higher is likelier.
    """

    path: str
    score: float

    def __str__(self) -> str:
        return f"{self.score:8.3f}  {self.path}"


# Each captioner's features by file (path, size, modification time), for as long as it lives.
_IN_MEMORY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _file_key(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


class FeatureCache:
    """Image features of one captioner, computed once per image file: kept in memory for the
    captioner's life and, with ``file``, in an ``.npz`` file that later sessions reuse.

    A file changed on disk (size or modification time) is encoded again.

    Args:
        captioner: Any captioner.
        file: An ``.npz`` file to read features from and add new ones to (written whole, under
            the outputs lock); None keeps them in memory only.

    Raises:
        InvalidOptionError: The file holds features another model, weights, runtime or
            preprocessing made.
    """

    def __init__(self, captioner, file: str | os.PathLike | None = None):
        self.captioner = captioner
        self.made = {
            "format": CACHE_FORMAT,
            **captioner.provenance(),
            "runtime": captioner.runtime,
            "preprocessor": [captioner.preprocessor.image_size, list(captioner.preprocessor.mean), list(captioner.preprocessor.std)],
        }
        self.memory: dict[str, np.ndarray] = _IN_MEMORY.setdefault(captioner, {})
        self.file = Path(file) if file is not None else None
        self.encoded = 0  # images this cache has encoded (the others came from memory or the file)
        self.in_file: set[str] = set()  # the features the cache file holds
        self.searched: set[str] = set()  # the features a search asked for
        if self.file is not None:
            claim(self.file, replace=True).close()  # a file that cannot be written is said now, before any work
            if self.file.exists():
                self._read(self.file)

    def _read(self, file: Path) -> None:
        try:
            with np.load(file, allow_pickle=False) as data:
                made = json.loads(str(data["made"]))
                keys = [str(key) for key in data["keys"]]
                features = data["features"]
            if not isinstance(made, dict) or made.get("format") != CACHE_FORMAT or len(keys) != len(features):
                raise ValueError("it does not say it is one")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise InputError(
                file, f"not a feature cache bliptk wrote ({error or type(error).__name__}); name another file or delete it"
            ) from None
        if made != json.loads(json.dumps(self.made)):
            raise InvalidOptionError(
                f"{file} holds features made by {made.get('model')} ({made.get('weights')}, runtime {made.get('runtime')}); "
                f"this search uses {self.made['model']} ({self.made['weights']}, runtime {self.made['runtime']}): "
                "name another cache file, or delete it"
            )
        for key, value in zip(keys, features, strict=True):
            self.memory.setdefault(key, value)
        self.in_file = set(keys)

    def features(self, paths: list[str], batch_size: int = 16) -> tuple[list[str], np.ndarray]:
        """The features ``(B, N, D)`` of the images that load, encoding only those not kept.

        Returns:
            The paths whose images loaded, and their features, in order.

        Warns:
            DataWarning: Images that could not be read, named (left out of the search).
        """
        keys: dict[str, str] = {}
        bad: list[str] = []
        for path in paths:
            try:
                keys[path] = _file_key(path)
            except OSError as error:
                bad.append(f"{path} ({error.strerror or error})")
        missing = [path for path in keys if keys[path] not in self.memory]
        for start in range(0, len(missing), batch_size):
            bad += self._encode(missing[start : start + batch_size], keys)
        if bad:
            warnings.warn(f"{len(bad)} images left out of the search: {'; '.join(bad[:5])}", DataWarning, stacklevel=3)
        found = [path for path in keys if keys[path] in self.memory]
        self.searched.update(keys[path] for path in found)
        empty = np.zeros((0, 0, 0), dtype=np.float32)
        return found, np.stack([self.memory[keys[path]] for path in found]) if found else empty

    def _encode(self, paths: list[str], keys: dict[str, str]) -> list[str]:
        """Encode a batch (a video from its frames, pooled); an image that does not load is
        encoded alone first, to name it."""
        try:
            features = [encode_video(self.captioner, path, VideoOptions()) if is_video(path) else None for path in paths]
            images = [path for path, video in zip(paths, features, strict=True) if video is None]
            encoded = iter(encode_images(self.captioner, images) if images else [])
            features = [next(encoded) if video is None else video for video in features]
        except (ImageLoadError, VideoLoadError):
            if len(paths) == 1:
                return [paths[0]]
            return [failure for path in paths for failure in self._encode([path], keys)]
        for path, value in zip(paths, features, strict=True):
            self.memory[keys[path]] = np.asarray(value, dtype=np.float32)
        self.encoded += len(paths)
        return []

    def save(self) -> Path | None:
        """Write the cache file (when one is named): the features it held and those searched since,
        when it lacks any of them."""
        if self.file is None or self.searched <= self.in_file:
            return None
        keys = [key for key in self.memory if key in self.in_file | self.searched]
        stacked = np.stack([self.memory[key] for key in keys])

        def write(temporary: Path) -> None:
            buffer = io.BytesIO()
            np.savez(buffer, made=np.array(json.dumps(self.made)), keys=np.array(keys), features=stacked)
            temporary.write_bytes(buffer.getvalue())

        with claim(self.file, replace=True) as output:
            output.write(write)
        self.in_file = set(keys)
        return self.file


@overload
def search(
    captioner,
    images,
    query: str,
    *,
    top_k: int | None = ...,
    prompt: str | None = ...,
    cache: FeatureCache | str | os.PathLike | None = ...,
    batch_size: int = ...,
    recursive: bool = ...,
) -> list[SearchHit]: ...


@overload
def search(
    captioner,
    images,
    query: list[str],
    *,
    top_k: int | None = ...,
    prompt: str | None = ...,
    cache: FeatureCache | str | os.PathLike | None = ...,
    batch_size: int = ...,
    recursive: bool = ...,
) -> list[list[SearchHit]]: ...


def search(
    captioner,
    images,
    query: str | list[str],
    *,
    top_k: int | None = None,
    prompt: str | None = None,
    cache: FeatureCache | str | os.PathLike | None = None,
    batch_size: int = 16,
    recursive: bool = False,
) -> list[SearchHit] | list[list[SearchHit]]:
    """Rank images by how likely the model finds ``query`` as their caption.

    Args:
        captioner: Any captioner (torch or ONNX).
        images: A folder, a glob pattern, an image file, or a list of them.
        query: A caption to look for, or a list (each ranked on its own, the images encoded once).
        top_k: Keep the best ``top_k`` hits; None keeps all.
        prompt: What the query is conditioned on (None: the model's own, else ``"a photography
            of"``); a query that starts with it is scored after it.
        cache: A [`FeatureCache`][bliptk.captioning.search.FeatureCache], or an ``.npz`` file to
            keep features in across sessions; None keeps them in memory for this captioner.
        batch_size: Images encoded, and queries scored, together.
        recursive: Look in subfolders of a folder.

    Returns:
        The hits, best first (equal scores in file order); for a list of queries, one list per query.

    Raises:
        NoInputsError: No image files among ``images``.
        InvalidOptionError: An empty query, one longer than the decoder's positions, a bad
            ``top_k``, or a cache file made by another model.
    """
    check_positive_int("batch_size", batch_size)
    if top_k is not None:
        check_positive_int("top_k", top_k)
    if not isinstance(query, str | list | tuple):
        raise InvalidArgumentError(f"query must be a string or a list of strings, got {type(query).__name__}")
    queries = [query] if isinstance(query, str) else list(query)
    text = request_prompt(None, own_options(captioner, DecodingOptions(prompt=prompt)))
    for index, each in enumerate(queries):  # a bad query is refused before any image is encoded
        caption_ids(captioner.tokenizer, each, text, captioner.max_positions, "query" if len(queries) == 1 else f"query {index}")
    say_if_random(captioner)
    store = cache if isinstance(cache, FeatureCache) else FeatureCache(captioner, cache)
    given = list(images) if isinstance(images, list | tuple) else [images]
    missing = [str(item) for item in given if not _findable(item)]
    if missing:
        raise InvalidOptionError(f"{missing[0]}: no such file or folder" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    paths, features = store.features(expand_inputs(given, recursive), batch_size)
    ranked = [_rank(captioner, paths, features, text_of, text, batch_size, top_k) for text_of in queries]
    store.save()
    return ranked[0] if isinstance(query, str) else ranked


def _findable(item) -> bool:
    """Whether an input names something: a file or folder that exists, or a glob pattern."""
    import glob

    text = os.fspath(item)
    return os.path.exists(text) or glob.has_magic(text)


def _rank(
    captioner, paths: list[str], features: np.ndarray, query: str, prompt: str, batch_size: int, top_k: int | None
) -> list[SearchHit]:
    means: list[float] = []
    for start in range(0, len(paths), batch_size):
        rows = len(paths[start : start + batch_size])
        scored = score_features(
            captioner.decoder, captioner.tokenizer, features[start : start + rows], [query] * rows, [prompt] * rows, statistics=False
        )
        means += [s.mean for s in scored]
    order = sorted(range(len(paths)), key=lambda index: -means[index])  # stable: equal scores in file order
    return [SearchHit(paths[index], means[index]) for index in order[:top_k]]
