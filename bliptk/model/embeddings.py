"""Image embeddings: one vector per image from the image encoder, with an on-disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import InvalidOptionError, OutputError, check_positive_int
from ..core.files import image_files
from ..store.outputs import reason, write_whole

__all__ = ["EMBEDDING_POOLINGS", "content_key", "embed"]

logger = logging.getLogger(__name__)

EMBEDDING_POOLINGS = ("cls", "mean")
"""How an image's encoder output becomes one vector: the class token, or the mean of the patch tokens."""


def content_key(item) -> str:
    """A hash of an image's content: the file's bytes for a path, the pixels for an image."""
    digest = hashlib.sha256()
    if isinstance(item, (str, os.PathLike)):
        with open(item, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    elif isinstance(item, Image.Image):
        digest.update(f"{item.mode}{item.size}".encode())
        digest.update(item.tobytes())
    else:
        array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def pool(features: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(B, N, D)`` encoder features -> ``(B, D)``: the first (class) token, or the patches' mean."""
    if pooling == "cls":
        return features[:, 0]
    return features[:, 1:].mean(dim=1)


def _cache_folder(cache: Path, captioner, pooling: str) -> Path:
    """The cache's folder for one way of embedding: the weights (fingerprint and dtype) and the
    pooling. A ``manifest.json`` in it records the model, weights and pooling."""
    weights = captioner.weights
    folder = cache / f"{weights.fingerprint}-{weights.dtype}-{pooling}"
    manifest = folder / "manifest.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{folder}: cannot write the embedding cache ({reason(error)}); choose another cache folder") from None
    if not manifest.is_file():
        text = json.dumps({**captioner.provenance(), "pooling": pooling}, indent=1)
        write_whole(manifest, lambda path: path.write_text(text))
    return folder


def _read_cached(path: Path) -> np.ndarray | None:
    """A cached embedding, or None when there is none or it is unreadable (then computed again)."""
    if not path.is_file():
        return None
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        logger.warning("%s: an unreadable cache entry; computing it again", path)
        return None
    return vector if vector.ndim == 1 else None


def _write_cached(path: Path, vector: np.ndarray) -> None:
    """Write a cache entry whole or not at all. The cache is shared, not locked: an entry is named by
    the content of what it embeds, so two processes writing one entry write the same bytes."""

    def save(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            np.save(file, vector)

    write_whole(path, save)


def embed(captioner, images, pooling: str = "cls", batch_size: int = 16, cache=None, progress: bool | None = None) -> np.ndarray:
    """See [`bliptk.Captioner.embed()`][bliptk.model.captioner.Captioner.embed]."""
    from ..core.progress import progress_bar

    if pooling not in EMBEDDING_POOLINGS:
        raise InvalidOptionError(f"pooling must be one of {', '.join(EMBEDDING_POOLINGS)}, got {pooling!r}")
    check_positive_int("batch_size", batch_size)
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        items = image_files(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    vectors: list[np.ndarray | None] = [None] * len(items)
    cache_folder, keys = None, [""] * len(items)
    if cache is not None:
        cache_folder = _cache_folder(Path(cache), captioner, pooling)
        keys = [content_key(item) for item in items]
        for index, key in enumerate(keys):
            vectors[index] = _read_cached(cache_folder / f"{key}.npy")
    missing = [index for index, vector in enumerate(vectors) if vector is None]
    if cache is not None:
        logger.info("embeddings: %d cached, %d to compute", len(items) - len(missing), len(missing))
    show_progress = progress if progress is not None else len(missing) > batch_size
    with progress_bar(total=len(missing), desc="embedding", unit="img", disable=not show_progress) as bar:
        for start in range(0, len(missing), batch_size):
            rows = missing[start : start + batch_size]
            features = captioner.encode_image([items[row] for row in rows])
            pooled = pool(features, pooling).float().cpu().numpy()
            for row, vector in zip(rows, pooled, strict=True):
                vectors[row] = vector
                if cache_folder is not None:
                    _write_cached(cache_folder / f"{keys[row]}.npy", vector)
            bar.update(len(rows))
    if not vectors:
        return np.zeros((0, captioner.image_encoder.hidden_size), dtype=np.float32)
    return np.stack([vector for vector in vectors if vector is not None]).astype(np.float32)
