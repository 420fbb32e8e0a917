"""Where bliptk writes: each output claimed before any work (and before any model loads), locked
against every other bliptk process, and written whole or not at all.

Every file or folder bliptk writes goes through here: the records of a batch job
([`RecordOutput`][bliptk.store.records.RecordOutput]), a figure, an ``.npz`` of embeddings, the folder of an
ONNX export, a fine-tuning run, the shards of a Ray job. [`claim()`][bliptk.store.outputs.claim] takes the
output's lock first (``<output>.lock`` beside it, held by the OS for this process alone, which names
its holder), so that no other writer, whatever it writes and whatever ``overwrite`` says, can
replace an output a running job holds; then it checks the output. A mistake (a folder that does not
exist or cannot be written, an output that names a folder, a FIFO, a name too long, a file that
would be replaced unasked) is an [`OutputError`][bliptk.core.errors.OutputError] or an
[`OutputExistsError`][bliptk.core.errors.OutputExistsError], raised at once.

Files are created with the permissions the process's umask gives new files (``0o666 & ~umask``,
as ``open()`` does), not the ``0o600`` of a private temporary file, so that collaborators and
services read them as they read any other output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..core.errors import OutputError, OutputExistsError, OutputLockedError
from ..core.optional import optional

__all__ = [
    "Output",
    "OutputLock",
    "checked_output",
    "claim",
    "folder_contents",
    "reason",
    "refuse_inside",
    "share",
    "write_folder_whole",
    "write_whole",
]


def reason(problem: OSError) -> str:
    """What an OS error means for an output, in words."""
    if problem.errno == errno.ENOSPC:
        return "the disk is full"
    if problem.errno == errno.EDQUOT:
        return "the disk quota is used up"
    if problem.errno == errno.ENAMETOOLONG:
        return "the name is too long for the file system"
    return problem.strerror or str(problem)


def _cannot_write(given: Path, problem: OSError) -> OutputError:
    return OutputError(f"{given}: cannot write there ({reason(problem)}); choose another output")


def _target(given: Path) -> Path:
    """Where an output is written: a link followed to what it points to."""
    return Path(os.path.realpath(given)) if given.is_symlink() else given


def _check_parent(given: Path, target: Path) -> None:
    if not target.parent.is_dir():
        raise OutputError(f"{given}: the folder {target.parent} does not exist; create it, or choose another output")


def checked_output(
    path: str | os.PathLike, *, folder: bool = False, replace: bool = False, fix: str = "pass --overwrite to replace it"
) -> Path:
    """An output path, checked (without its lock: [`claim()`][bliptk.store.outputs.claim] takes both): the
    folder it goes in exists and can be written; it names what it should (a file, or with
    ``folder`` a folder), no FIFO or device; and it exists only where ``replace`` allows. A link is
    followed: the output is written where it points.

    Args:
        path: The output.
        folder: The output is a folder (an ONNX export, a fine-tuning run), not a file.
        replace: An existing output may be replaced (or continued).
        fix: What the [`OutputExistsError`][bliptk.core.errors.OutputExistsError] says to do.

    Returns:
        The path to write (a link resolved).

    Raises:
        OutputError, OutputExistsError: The output cannot or must not be written.
    """
    given = Path(path)
    try:
        target = _target(given)
        _check_parent(given, target)
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
        descriptor, probe = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:40]}.", suffix=".probe")
        os.close(descriptor)
        os.unlink(probe)
        if len(target.name.encode()) > os.pathconf(target.parent, "PC_NAME_MAX"):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(target))
    except OSError as problem:
        if isinstance(problem, OutputError):
            raise
        raise _cannot_write(given, problem) from None
    return target


def _cannot_make(path: Path) -> OSError | None:
    """Why a lock file cannot be opened for writing there, or None where it can."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as problem:
        return problem
    os.close(descriptor)
    return None


class OutputLock:
    """An OS lock on ``<output>.lock`` (``filelock``: ``fcntl`` or ``msvcrt``), released by the OS
    when its process ends however it ends. The holder writes who it is into the lock file, so
    that a second run can say which process writes the output.

    Args:
        output: The output (a file or a folder); its lock file goes beside it.
        given: The output as the caller named it, for messages (default ``output``).

    Raises:
        OutputLockedError: Another process holds the lock.
        OutputError: The lock file cannot be made there (a read-only folder, a name too long).
        MissingDependencyError: ``filelock`` is not installed.
    """

    def __init__(self, output: Path, given: Path | None = None):
        filelock = optional("filelock")

        output = Path(os.path.abspath(output))
        self.path = output.with_name(output.name + ".lock")
        self._lock = filelock.FileLock(self.path, timeout=0, on_acquired=self._mark)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            # filelock reads a lock file it cannot make (a read-only place, /proc) as one held by another
            # process: say which it is
            problem = _cannot_make(self.path)
            if problem is not None:
                raise _cannot_write(given or output, problem) from None
            raise OutputLockedError(given or output, self._holder()) from None
        except OSError as problem:
            raise _cannot_write(given or output, problem) from None

    @staticmethod
    def _mark(descriptor: int) -> None:
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.pwrite(descriptor, holder, 0)
        os.ftruncate(descriptor, len(holder))

    def _holder(self) -> dict:
        """Who holds the lock, as it wrote; a holder that has just locked may not have written yet."""
        for _ in range(50):
            try:
                holder = json.loads(self.path.read_text())
                return holder if isinstance(holder, dict) else {}
            except (OSError, ValueError):
                time.sleep(0.01)
        return {}

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        # Unlinked while still held: filelock sees an unlinked lock file and takes the new one.
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._lock.release()


class Output:
    """An output this process has claimed: locked first (so that nothing another bliptk process
    holds is touched, ``overwrite`` or not), then checked as
    [`checked_output()`][bliptk.store.outputs.checked_output] checks it. Held until
    [`close()`][bliptk.store.outputs.Output.close]; a context manager.

    Attributes:
        path: Where to write (a link resolved).
        given: The output as the caller named it.
    """

    def __init__(
        self, path: str | os.PathLike, *, folder: bool = False, replace: bool = False, fix: str = "pass --overwrite to replace it"
    ):
        self.given = Path(path)
        try:
            target = _target(self.given)
        except OSError as problem:  # a name too long, a link loop
            raise _cannot_write(self.given, problem) from None
        _check_parent(self.given, target)
        self._lock = OutputLock(target, self.given)
        try:
            self.path = checked_output(self.given, folder=folder, replace=replace, fix=fix)
        except BaseException:
            self._lock.release()
            raise

    def write(self, write: Callable[[Path], object]) -> Path:
        """Write the output file whole ([`write_whole()`][bliptk.store.outputs.write_whole])."""
        write_whole(self.path, write)
        return self.path

    def close(self) -> None:
        """Let other processes write the output."""
        self._lock.release()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def claim(path: str | os.PathLike, *, folder: bool = False, replace: bool = False, fix: str = "pass --overwrite to replace it") -> Output:
    """Claim an output before any work: see [`Output`][bliptk.store.outputs.Output].

    Raises:
        OutputLockedError: Another process writes it.
        OutputError, OutputExistsError: It cannot or must not be written.
    """
    return Output(path, folder=folder, replace=replace, fix=fix)


# --- permissions --------------------------------------------------------------------------------------


def _umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(path: Path, *, folder: bool = False) -> None:
    """Give a file (or folder) bliptk made the mode a new one gets from the umask: ``0o666`` (``0o777``
    for a folder) less the umask, as ``open()`` and ``mkdir()`` give, instead of a temporary file's
    private ``0o600``."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


# --- writing whole -------------------------------------------------------------------------------------


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """Write a file whole or not at all: ``write`` writes a temporary file beside ``path`` (of this
    process's own), which then replaces ``path``; on any failure the temporary file is removed and
    ``path`` left as it was. The file gets the umask's permissions ([`share()`][bliptk.store.outputs.share]).

    Raises:
        OutputError: The write failed (a full disk, a read-only folder, ...).
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=f".tmp{path.suffix}")
    os.close(descriptor)
    try:
        write(Path(temporary))
        share(Path(temporary))
        os.replace(temporary, path)
    except OSError as problem:
        raise OutputError(f"{path}: cannot write ({reason(problem)})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def write_folder_whole(folder: Path, write: Callable[[Path], object], what: str = "the folder") -> None:
    """Write a folder whole or not at all: ``write`` fills a new folder beside ``folder``, which
    then takes its place (an existing ``folder``, which the caller has claimed, is removed only
    once the new one is complete). On any failure the new folder is removed and ``folder`` left as
    it was; an ``OSError`` becomes an [`OutputError`][bliptk.core.errors.OutputError] naming the folder.
    """
    building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name[:40]}.", suffix=".tmp"))
    try:
        write(building)
        share(building, folder=True)
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name[:40]}.", suffix=".old"))
            os.replace(folder, old / "x")
            os.replace(building, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, folder)
    except OSError as problem:
        raise OutputError(f"{folder}: cannot write {what} ({reason(problem)})") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)


# --- what a folder holds --------------------------------------------------------------------------------


def folder_contents(folder: Path) -> str | None:
    """What a folder holds, in words, for a message: ``"a fine-tuning run (finetune.json)"``, ``"an
    ONNX export (manifest.json)"``, ``"a checkpoint (config.json and its weights)"``, ``"3 other
    files (a.txt, b.txt, c.txt)"``; None for an empty or missing folder."""
    try:
        names = sorted(entry.name for entry in folder.iterdir())
    except OSError:
        return None
    if not names:
        return None
    if "finetune.json" in names:
        return "a fine-tuning run (finetune.json)"
    if "manifest.json" in names and any(name.endswith(".onnx") for name in names):
        return "an ONNX export (manifest.json)"
    if "config.json" in names and any(name.endswith((".safetensors", ".bin")) for name in names):
        return "a checkpoint (config.json and its weights)"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} other file{'s' if len(names) != 1 else ''} ({shown})"


def refuse_inside(out: Path, source: str | os.PathLike | None, what: str = "out") -> None:
    """Refuse an output folder that is the model's own folder, or inside it: writing there would
    change the model being read (a checkpoint's weights replaced by the run that reads them).

    Args:
        out: The output folder.
        source: The model as given (a folder path, or a name that is none).
        what: How the caller names the output, for the message.

    Raises:
        OutputError: ``out`` is ``source`` or inside it.
    """
    if source is None:
        return
    model = Path(os.fspath(source)).expanduser()
    if not model.is_dir():
        return
    if Path(os.path.realpath(out)).is_relative_to(os.path.realpath(model)):
        raise OutputError(
            f"{what} {out} is the model's own folder {model}, or inside it; write the result to a folder of its own",
            command_line={f"{what} {out}": f"--{what} {out}"},
        )
