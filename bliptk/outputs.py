"""Where bliptk writes: each output checked before any work (and before any model loads), and
written whole or not at all.

Every command's output goes through here: the records of a batch job
([`RecordOutput`][bliptk.records.RecordOutput]), a figure, an ``.npz`` of embeddings, the folder of an
ONNX export. A mistake (a folder that does not exist or cannot be written, an output that names a
folder, a FIFO, a name too long, a file that would be replaced unasked) is an
[`OutputError`][bliptk.errors.OutputError] or an [`OutputExistsError`][bliptk.errors.OutputExistsError],
raised at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError, OutputExistsError

__all__ = ["checked_output", "reason", "write_whole"]


def reason(problem: OSError) -> str:
    """What an OS error means for an output, in words."""
    if problem.errno == errno.ENOSPC:
        return "the disk is full"
    if problem.errno == errno.EDQUOT:
        return "the disk quota is used up"
    if problem.errno == errno.ENAMETOOLONG:
        return "the name is too long for the file system"
    return problem.strerror or str(problem)


def checked_output(
    path: str | os.PathLike, *, folder: bool = False, replace: bool = False, fix: str = "pass --overwrite to replace it"
) -> Path:
    """An output path, checked: the folder it goes in exists and can be written; it names what it
    should (a file, or with ``folder`` a folder), no FIFO or device; and it exists only where
    ``replace`` allows. A link is followed: the output is written where it points.

    Args:
        path: The output.
        folder: The output is a folder (an ONNX export), not a file.
        replace: An existing output may be replaced (or continued).
        fix: What the [`OutputExistsError`][bliptk.errors.OutputExistsError] says to do.

    Returns:
        The path to write (a link resolved).

    Raises:
        OutputError, OutputExistsError: The output cannot or must not be written.
    """
    given = Path(path)
    try:
        target = Path(os.path.realpath(given)) if given.is_symlink() else given
        parent = target.parent
        if not parent.is_dir():
            raise OutputError(f"{given}: the folder {parent} does not exist; create it, or choose another output")
        if target.exists():
            mode = target.stat().st_mode
            if folder and not stat.S_ISDIR(mode):
                raise OutputError(f"{given} is a file, not a folder; choose another output")
            if not folder and stat.S_ISDIR(mode):
                raise OutputError(f"{given} is a folder; name a file")
            if not folder and not stat.S_ISREG(mode):
                raise OutputError(f"{given} is not a regular file (a FIFO, socket or device); name a file")
            if not replace:
                raise OutputExistsError(given, fix, fix)
        descriptor, probe = tempfile.mkstemp(dir=parent, prefix=f".{target.name[:40]}.", suffix=".probe")
        os.close(descriptor)
        os.unlink(probe)
        if len(target.name.encode()) > os.pathconf(parent, "PC_NAME_MAX"):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(target))
    except OSError as problem:
        if isinstance(problem, OutputError):
            raise
        raise OutputError(f"{given}: cannot write there ({reason(problem)}); choose another output") from None
    return target


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """Write a file whole or not at all: ``write`` writes a temporary file beside ``path`` (of this
    process's own), which then replaces ``path``; on any failure the temporary file is removed and
    ``path`` left as it was.

    Raises:
        OutputError: The write failed (a full disk, a read-only folder, ...).
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=f".tmp{path.suffix}")
    os.close(descriptor)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except OSError as problem:
        raise OutputError(f"{path}: cannot write ({reason(problem)})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
