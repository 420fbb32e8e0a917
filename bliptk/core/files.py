"""Finding files: the image and video files of folders and globs, and the notebooks' example files."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from .errors import ExampleNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "example_path", "image_files", "media_files"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".heic", ".heif", ".avif"})
"""The extensions of the image files a folder gives (case-insensitive)."""
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv", ".ts", ".mts"}
)
"""A file with one of these names is a video, and fails as one when it cannot be read."""


def image_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files of a folder (by extension, case-insensitive), sorted by path.

    Every entry with an image file's name is listed, unless it is a folder: one that cannot be
    read (a FIFO, a broken link, a link loop) is listed too, so that a batch job gives it an error
    record instead of skipping it silently.

    Args:
        folder: A folder, or a glob pattern such as ``"photos/*.jpg"``.
        recursive: Also look in subfolders (for a glob: let ``**`` match them).
    """
    return _files(folder, recursive, IMAGE_EXTENSIONS)


def media_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image and video files of a folder (by extension, case-insensitive), sorted by path, as
    [`image_files()`][bliptk.core.files.image_files] lists images."""
    return _files(folder, recursive, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)


def _files(folder: str | os.PathLike, recursive: bool, extensions: frozenset[str]) -> list[Path]:
    folder = os.fspath(folder)
    if glob.has_magic(folder):
        return sorted(Path(p) for p in glob.glob(folder, recursive=recursive) if not Path(p).is_dir())
    root = Path(folder)
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in candidates if p.suffix.lower() in extensions and not p.is_dir())


def example_path(name: str = "") -> Path:
    """A file or folder of the examples the notebooks use (``images/...``, ``videos/...``),
    found wherever Python started.

    Looks in, in order: the folder ``BLIPTK_EXAMPLES`` names; the working directory; its
    ``notebooks`` folder; the ``notebooks`` folder of the source tree bliptk runs from (an
    editable install, as the README's). So a notebook finds its photos whether its kernel
    started beside it (Jupyter) or at the repository root (VS Code, papermill, nbclient).

    Args:
        name: A path inside the examples folder, such as ``"images/woman-with-cake.jpg"``;
            empty for the folder itself.

    Raises:
        ExampleNotFoundError: No examples folder holds it; the message lists where it looked.
    """
    candidates = [Path(os.environ["BLIPTK_EXAMPLES"])] if os.environ.get("BLIPTK_EXAMPLES") else []
    candidates += [Path.cwd(), Path.cwd() / "notebooks", Path(__file__).resolve().parents[2] / "notebooks"]
    for folder in candidates:
        if (folder / "images").is_dir() and (folder / name).exists():
            return folder / name
    raise ExampleNotFoundError(
        f"example {name!r} not found in {', '.join(str(folder) for folder in candidates)}; set BLIPTK_EXAMPLES to "
        "the notebooks folder of a bliptk checkout"
    )
