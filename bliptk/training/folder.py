"""The output folder of a fine-tuning run: claimed before the model loads, resumed only if it holds
a run, sized against the disk, and its checkpoints known complete or torn.

A run's folder holds ``finetune.json`` (how the run is made: [`bliptk.training.finetune`][bliptk.training.finetune]),
``checkpoints/checkpoint-N`` while it runs, and the final checkpoint once it ends. Each checkpoint
that saved whole carries [`COMPLETE_FILE`][bliptk.training.folder.COMPLETE_FILE], the size of each of
its files; one without it, or whose files are not those sizes (a kill or a full disk while it was
written, a file truncated since), is torn: resuming takes the newest complete checkpoint and
removes the torn ones, saying which.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

from ..core.errors import CheckpointWarning, OutputError, OutputExistsError
from ..core.notices import say
from ..store.outputs import Output, claim, folder_contents, reason, refuse_inside, share

__all__ = [
    "COMPLETE_FILE",
    "MANIFEST_FILE",
    "checkpoint_bytes",
    "claim_run_folder",
    "complete_checkpoint",
    "mark_complete",
    "resumable_checkpoint",
    "space_needed",
]

MANIFEST_FILE = "finetune.json"
"""How a fine-tuning run is made (base weights, data, options, versions) and how it went."""
COMPLETE_FILE = "bliptk-complete.json"
"""Written last into a checkpoint that saved whole: each of its files and its size in bytes."""
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def claim_run_folder(out, resume: bool, source=None) -> Output:
    """Claim a run's output folder before any model loads: locked against every other bliptk
    process, not the model's own folder (``source``) nor inside it, and holding what it should: a
    new or empty folder, or, with ``resume``, a run of bliptk's (its ``finetune.json``).

    Raises:
        OutputExistsError: It holds a run and ``resume`` is off.
        OutputError: It holds something else (a checkpoint, an export, other files), is the model's
            folder, or cannot be written; another process writes it (``OutputLockedError``).
    """
    output = claim(out, folder=True, replace=True)
    try:
        folder = output.path
        refuse_inside(folder, source)
        held = folder_contents(folder)
        is_run = (folder / MANIFEST_FILE).is_file()
        if held is not None and not is_run:
            already = "resume continues a run that bliptk finetune began there; " if resume else ""
            raise OutputError(
                f"{output.given} holds {held}, not a fine-tuning run; {already}choose another (new or empty) out",
                command_line={"resume continues": "--resume continues", "(new or empty) out": "(new or empty) --out"},
            )
        if is_run and not resume:
            raise OutputExistsError(
                output.given,
                "it holds a fine-tuning run: pass resume=True to continue it",
                "it holds a fine-tuning run: pass --resume to continue it",
                other="choose another out",
            )
        if is_main_process():
            folder.mkdir(exist_ok=True)
    except BaseException:
        output.close()
        raise
    return output


def is_main_process() -> bool:
    """Whether this is the process that writes (rank 0 of a ``torchrun`` job, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


# --- the disk ----------------------------------------------------------------------------------------


def checkpoint_bytes(total_parameters: int, trained_parameters: int, lora: bool) -> int:
    """About what one checkpoint takes: the weights saved (a LoRA checkpoint: its adapters and
    trained norm; else every float32 weight) and AdamW's two moments of every trained weight."""
    saved = trained_parameters if lora else total_parameters
    return 4 * saved + 8 * trained_parameters + 2**20  # and the trainer's state, the scheduler, the RNGs


def space_needed(per_checkpoint: int, final: int, checkpoints: int, keep: int, validating: bool) -> int:
    """Bytes a run may hold at once: the checkpoints kept (``keep``, the best besides when
    validating, and a new one before rotation removes the oldest), never more than it makes, and
    the final weights."""
    alive = min(checkpoints, keep + 1 + (1 if validating else 0))
    return alive * per_checkpoint + final


def check_space(folder: Path, needed: int, per_checkpoint: int, alive: int) -> None:
    """Refuse a run the disk cannot hold, in one line, before it starts.

    Raises:
        OutputError: Less free space than ``needed`` (less what the folder's checkpoints hold already).
    """
    held = sum(file.stat().st_size for file in (folder / "checkpoints").rglob("*") if file.is_file()) if folder.is_dir() else 0
    free = shutil.disk_usage(folder if folder.is_dir() else folder.parent).free
    if free + held < needed:
        fewer = "keep fewer checkpoints (keep_checkpoints=1), " if alive > 2 else ""
        raise OutputError(
            f"{folder}: this run needs about {_gigabytes(needed)} (up to {alive} checkpoints of {_gigabytes(per_checkpoint)} and the final "
            f"weights), the disk has {_gigabytes(free)} free; free space, {fewer}or choose another out",
            command_line={"keep_checkpoints=1": "--keep-checkpoints 1", "another out": "another --out"},
        )


def _gigabytes(count: int) -> str:
    """A size in words: MB below a gigabyte, GB above."""
    return f"{count / 1e6:.0f} MB" if count < 1e9 else f"{count / 1e9:,.1f} GB"


def say_space(folder: Path, per_checkpoint: int, alive: int) -> None:
    """One line: what the checkpoints will take, before they take it."""
    if is_main_process():
        say(f"fine-tuning into {folder}: checkpoints of about {_gigabytes(per_checkpoint)} each, at most {alive} at once")


# --- checkpoints -------------------------------------------------------------------------------------


def mark_complete(checkpoint: Path) -> None:
    """Record that a checkpoint saved whole: every file's size, written last. Its files get the
    umask's permissions (``Trainer`` writes some of them private)."""
    files = sorted(file for file in checkpoint.rglob("*") if file.is_file())
    for file in files:
        share(file)
    sizes = {str(file.relative_to(checkpoint)): file.stat().st_size for file in files}
    (checkpoint / COMPLETE_FILE).write_text(json.dumps(sizes, indent=1))
    share(checkpoint / COMPLETE_FILE)


def complete_checkpoint(checkpoint: Path) -> str | None:
    """Why a checkpoint is torn, or None when it is complete."""
    try:
        sizes = json.loads((checkpoint / COMPLETE_FILE).read_text())
    except FileNotFoundError:
        return "it was not saved whole"
    except (OSError, ValueError):
        return f"its {COMPLETE_FILE} cannot be read"
    if not isinstance(sizes, dict) or "trainer_state.json" not in sizes:
        return f"its {COMPLETE_FILE} is not bliptk's"
    for name, size in sizes.items():
        file = checkpoint / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size:,} bytes, not the {size:,} saved"
        damage = _damage(file)
        if damage is not None:
            return f"{name} {damage}"
    return None


def _damage(file: Path) -> str | None:
    """What is wrong inside a file of the right size (a power loss can leave zeros): torch's files
    are zip archives whose checksums are read, safetensors files have a header to parse. Nothing is
    unpickled."""
    import zipfile

    if file.suffix in (".pt", ".pth", ".bin"):
        try:
            with zipfile.ZipFile(file) as archive:
                broken = archive.testzip()
        except (zipfile.BadZipFile, OSError) as error:
            return f"is no readable archive ({error})"
        return None if broken is None else f"has a damaged member ({broken})"
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(file, "np") as tensors:
                tensors.keys()
        except (SafetensorError, OSError) as error:
            return f"is no readable safetensors file ({error})"
    return None


def resumable_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint of a run; torn ones newer than it are removed, each said in a
    [`CheckpointWarning`][bliptk.core.errors.CheckpointWarning]. None when there is none."""
    found = sorted(
        (int(match.group(1)), path)
        for path in (checkpoints.iterdir() if checkpoints.is_dir() else [])
        if (match := _CHECKPOINT.match(path.name))
    )
    for _, path in reversed(found):
        torn = complete_checkpoint(path)
        if torn is None:
            return path
        warnings.warn(f"{path} is torn ({torn}): removed, resuming from the checkpoint before it", CheckpointWarning, stacklevel=3)
        if is_main_process():
            shutil.rmtree(path, ignore_errors=True)
    return None


def remove_torn(checkpoint: Path, problem: BaseException) -> OutputError:
    """Remove a checkpoint that failed to save; the error that says so, in one line."""
    cause = reason(problem) if isinstance(problem, OSError) else _runtime_reason(problem, checkpoint)  # before the space is freed
    with contextlib.suppress(OSError):
        shutil.rmtree(checkpoint)
    return OutputError(
        f"{checkpoint.parent.parent}: cannot save checkpoint {checkpoint.name} ({cause}); it was removed, the checkpoints before it "
        "are kept: free space, then resume=True",
        command_line={"resume=True": "--resume"},
    )


def _runtime_reason(problem: BaseException, checkpoint: Path) -> str:
    """torch's and safetensors' writers report a full disk as a RuntimeError of their own."""
    text = str(problem)
    with contextlib.suppress(OSError):
        if shutil.disk_usage(checkpoint.parent).free < 2**20 or "No space left" in text or "file write failed" in text:
            return "the disk is full"
    return text.strip().splitlines()[0][:200] if text.strip() else type(problem).__name__


def checkpoints_to_make(total_steps: int, interval: int) -> int:
    """How many checkpoints a run of ``total_steps`` saves, one every ``interval`` steps (and at the end)."""
    return max(1, math.ceil(total_steps / interval))
