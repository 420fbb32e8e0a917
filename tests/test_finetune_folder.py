"""A fine-tuning run's folder: what makes a checkpoint complete or torn, what a run needs of the disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import bliptk
from bliptk.training.folder import checkpoint_bytes, complete_checkpoint, mark_complete, resumable_checkpoint, space_needed


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": torch.ones(64, 64)}, folder / "model.safetensors")
    torch.save({"state": {0: torch.zeros(64)}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text("{}")
    mark_complete(folder)
    return folder


def _zeroed(file: Path) -> None:
    file.write_bytes(bytes(file.stat().st_size))  # what a power loss can leave: the size, and zeros


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda c: _zeroed(c / "optimizer.pt"), r"optimizer.pt is no readable archive \(File is not a zip file\)"),
        (lambda c: _zeroed(c / "model.safetensors"), r"model.safetensors is no readable safetensors file \(.*header.*\)"),
        (lambda c: (c / "optimizer.pt").write_bytes(b"x"), r"optimizer.pt is 1 bytes, not the [\d,]+ saved"),
        (lambda c: (c / "trainer_state.json").unlink(), r"trainer_state.json is missing"),
        (lambda c: (c / "bliptk-complete.json").unlink(), r"it was not saved whole"),
        (lambda c: (c / "bliptk-complete.json").write_text("{oops"), r"its bliptk-complete.json cannot be read"),
    ],
    ids=["zeroed archive", "zeroed safetensors", "truncated", "no trainer state", "no mark", "a broken mark"],
)
def test_a_checkpoint_is_torn_whatever_tore_it(tmp_path, damage, why):
    checkpoint = _checkpoint(tmp_path / "checkpoint-3")
    assert complete_checkpoint(checkpoint) is None
    damage(checkpoint)
    assert re.fullmatch(why, complete_checkpoint(checkpoint)), complete_checkpoint(checkpoint)


def test_resuming_takes_the_newest_complete_checkpoint_and_removes_newer_torn_ones(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        _checkpoint(checkpoints / f"checkpoint-{step}")
    _zeroed(checkpoints / "checkpoint-6" / "optimizer.pt")
    (checkpoints / "checkpoint-10").mkdir()  # killed as it began saving
    with pytest.warns(bliptk.CheckpointWarning) as said:
        assert resumable_checkpoint(checkpoints) == checkpoints / "checkpoint-4"
    assert [str(w.message).split("/")[-1].split(" is torn")[0] for w in said] == ["checkpoint-10", "checkpoint-6"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert resumable_checkpoint(tmp_path / "none") is None


def test_the_space_a_run_needs_bounds_what_its_checkpoints_take(tmp_path):
    """The estimate against a real tiny checkpoint: at least what it takes, at most a little more."""
    bliptk.finetune(
        "tiny",
        [(p, "a dog") for p in sorted((Path(__file__).parent / "data" / "images").glob("*.jpg"))],
        out=tmp_path / "run",
        max_steps=1,
        batch_size=3,
    )
    [checkpoint] = (tmp_path / "run" / "checkpoints").iterdir()
    taken = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    model = bliptk.load("tiny").model
    total = sum(p.numel() for p in model.parameters())
    estimate = checkpoint_bytes(total, total, lora=False)
    assert taken <= estimate <= 1.25 * taken + 2**21, (taken, estimate)
    assert space_needed(estimate, 4 * total, checkpoints=10, keep=1, validating=True) == 3 * estimate + 4 * total
    assert space_needed(estimate, 4 * total, checkpoints=1, keep=3, validating=False) == estimate + 4 * total
