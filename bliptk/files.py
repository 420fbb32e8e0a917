"""Finding image files: folders, globs and lists."""

from __future__ import annotations

import glob
import os
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "image_files"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".heic", ".heif", ".avif"}
)


def image_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files of a folder (by extension, case-insensitive), sorted by path.

    Args:
        folder: A folder, or a glob pattern such as ``"photos/*.jpg"``.
        recursive: Also look in subfolders (for a glob: let ``**`` match them).
    """
    folder = os.fspath(folder)
    if glob.has_magic(folder):
        return sorted(Path(p) for p in glob.glob(folder, recursive=recursive) if Path(p).is_file())
    root = Path(folder)
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
