"""Fine-tuning a captioner on image-caption pairs, in full or with LoRA, through ``transformers``'
``Trainer`` (checkpoints, resume, gradient accumulation, mixed precision, ``torchrun``) and ``peft``.

BLIP's recipe (``configs/caption_coco.yaml``): the prompt ``"a picture of "`` masked from the loss,
AdamW with weight decay 0.05 and a cosine schedule, label smoothing 0.1, lr 1e-5 (ViT-B/16) or
2e-6 (ViT-L/16). The output folder is a checkpoint in Hugging Face layout (``bliptk.load(out)``,
``BlipForConditionalGeneration.from_pretrained(out)``) with a ``finetune.json`` of how it was made
and a ``captioning.json`` of the prompt it was trained after, which its captions start from.

Everything about a run is checked before the model loads: the options, the data, the output folder
([`bliptk.training.folder`][bliptk.training.folder]: claimed, of the right kind, the disk large
enough). A run is seeded whole (LoRA's adapters included), so that it repeats, and a run killed and
resumed ends where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path

import torch

from ..core.errors import (
    InvalidArgumentError,
    InvalidOptionError,
    option_error,
)
from ..core.optional import optional
from ..core.pipeline import random_origin, say_random_start
from .data import MAX_TEXT_TOKENS, CaptionPairs, read_pairs
from .folder import (
    MANIFEST_FILE,
    check_space,
    checkpoint_bytes,
    checkpoints_to_make,
    claim_run_folder,
    is_main_process,
    say_space,
    space_needed,
)
from .options import (
    DEFAULT_LORA_TARGETS,
    HEAD_NORM,
    VISION_LORA_TARGETS,
    FinetuneOptions,
    FinetuneResult,
    LoraOptions,
    lora_pattern,
)

__all__ = ["DEFAULT_LORA_TARGETS", "HEAD_NORM", "VISION_LORA_TARGETS", "FinetuneOptions", "FinetuneResult", "LoraOptions", "finetune"]


def finetune(
    model,
    train,
    *,
    out: str | os.PathLike,
    val=None,
    images: str | os.PathLike | None = None,
    resume: bool = False,
    load_options: dict | None = None,
    **options,
) -> FinetuneResult:
    """Fine-tune a captioner on image-caption pairs.

    The labels follow BLIP's rule: ``[DEC]``, the prompt and the padding are -100, the caption and
    its ``[SEP]`` are learned (``transformers`` shifts them by one and applies the label smoothing).

    Everything is checked before the model loads: the options (LoRA's targets against the
    architecture), the data, the output folder (locked, new or empty, or with ``resume`` a run of
    bliptk's; never the model's own folder) and the disk, which must hold the checkpoints kept and
    the final weights (their size is said in one line on standard error).

    A [`Captioner`][bliptk.model.captioner.Captioner] given as ``model`` is trained in place: afterwards it
    is the fine-tuned model, with the weights, fingerprint, name (``out``) and prompt that
    ``bliptk.load(out)`` gives, so that its records are never taken for the base model's.

    Args:
        model: A float32 or bfloat16 [`Captioner`][bliptk.model.captioner.Captioner] (trained in place; not
            an int8 or compiled one), or anything [`bliptk.load()`][bliptk.model.loading.load] takes.
        train: The training pairs: see [`read_pairs()`][bliptk.training.data.read_pairs].
        out: The output folder: a checkpoint once the run ends, ``checkpoints/`` while it runs.
        val: Validation pairs: the loss at every checkpoint (each epoch by default) and, with the
            ``eval`` extra, the COCO metrics (beam 3, 5 to 20 tokens) before training and at each
            checkpoint; the best checkpoint is the one kept.
        images: The folder a data file's relative image paths are relative to (default its own).
        resume: Continue the run in ``out`` from its newest complete checkpoint (after a kill, a
            full disk): torn checkpoints are removed, each said in a
            [`CheckpointWarning`][bliptk.core.errors.CheckpointWarning].
        load_options: For a model given by name: what [`bliptk.load()`][bliptk.model.loading.load] gets
            besides (``pretrained=False``, ``device``...).
        **options: [`FinetuneOptions`][bliptk.training.finetune.FinetuneOptions]: ``epochs`` (5),
            ``max_steps`` (None: the epochs decide), ``batch_size`` (8, per process),
            ``gradient_accumulation`` (1), ``lr`` (1e-5), ``weight_decay`` (0.05), ``warmup_steps``
            (0), ``prompt`` ("a picture of "), ``label_smoothing`` (0.1), ``lora`` (None; a
            [`LoraOptions`][bliptk.training.finetune.LoraOptions], a dict of its fields, or a rank),
            ``freeze_vision``, ``gradient_checkpointing``, ``dtype`` (None: float32;
            ``"bfloat16"`` autocast), ``seed`` (0: the data order, dropout and LoRA's initial
            adapters), ``save_steps`` (None: each epoch), ``keep_checkpoints`` (1: the newest
            checkpoints kept, besides the best).

    Returns:
        A [`FinetuneResult`][bliptk.training.finetune.FinetuneResult].

    Raises:
        OutputExistsError: ``out`` holds a run and ``resume`` is off.
        OutputError: ``out`` holds something else, is the model's folder, is written by another
            process, or the disk cannot hold the run.
        InvalidOptionError: An option out of range, LoRA targets that match no layer, a prompt that
            leaves no room for a caption, or ``resume`` of a run made otherwise.
        InvalidArgumentError: ``out`` or ``load_options`` of the wrong kind.
        InputError: Data with no usable row, or that cannot be read.
        MissingDependencyError: ``accelerate`` (or ``peft`` for LoRA) is not installed.
    """
    settings = _options(options)
    load_options = _checked_load_options(model, load_options, settings)
    _check_out(out)
    optional("accelerate")
    if settings.lora is not None:
        optional("peft")
    architecture = _architecture(model, load_options)
    _check_prompt(settings.prompt)
    _check_lora_targets(architecture, settings.lora)
    with _claimed(out, resume, _source(model)) as folder:
        train_pairs = read_pairs(train, images, name="train")
        val_pairs = None if val is None else read_pairs(val, images, name="val")
        space = _planned_space(folder, architecture, settings, len(train_pairs), validating=val_pairs is not None)
        manifest = _manifest(train_pairs, val_pairs, settings)
        _check_resumable(folder, manifest, resume)  # the data and the options, before the model loads
        finished = _finished_run(folder, model, load_options) if resume else None
        if finished is not None:  # nothing left to train: no model to load, nothing to write
            return finished
        captioner = _captioner(model, load_options)
        base = {"model": captioner.name, "weights": captioner.weights.as_dict()}
        # Random weights, or weights fine-tuned from them: recorded, said, and carried into the checkpoints.
        manifest = {"base": base, "random_origin": random_origin(captioner), **manifest}
        _check_resumable(folder, manifest, resume)  # and the base weights, once they are known
        if is_main_process():
            say_random_start(captioner)
        say_space(folder, *space)
        from .run import FinetuneRun  # Trainer's import makes torch's compiler cache: only now that it is checked

        return FinetuneRun(captioner, train_pairs, val_pairs, settings, folder, manifest, os.fspath(out)).train(resume)


def _options(options: dict) -> FinetuneOptions:
    known = set(FinetuneOptions.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise option_error(f"unknown option {unknown[0]!r}; finetune takes {', '.join(sorted(known))}", unknown[0])
    lora = options.get("lora")
    if isinstance(lora, bool) and lora:
        options["lora"] = LoraOptions()
    elif isinstance(lora, int) and not isinstance(lora, bool):
        options["lora"] = LoraOptions(r=lora, alpha=2 * lora)
    elif isinstance(lora, dict):
        fields = set(LoraOptions.__dataclass_fields__)
        if set(lora) - fields:
            raise option_error(f"unknown lora option {sorted(set(lora) - fields)[0]!r}; lora takes {', '.join(sorted(fields))}", "lora")
        options["lora"] = LoraOptions(**lora)
    elif lora is False:
        options["lora"] = None
    elif lora is not None and not isinstance(lora, LoraOptions):
        raise option_error(f"lora must be None, a rank, a dict or LoraOptions, got {type(lora).__name__}", "lora")
    return FinetuneOptions(**options)


_LOAD_OPTIONS = ("pretrained", "device", "dtype", "weights_seed", "compile")


def _checked_load_options(model, load_options, options: FinetuneOptions) -> dict:
    """``load_options``, checked; a model of no known kind, and a captioner that cannot be trained
    (int8, compiled; float16 on a CPU), refused."""
    from ..model.captioner import Captioner
    from ..model.loading import resolve_device

    if not isinstance(model, Captioner | str | os.PathLike):
        raise InvalidArgumentError(
            f"model must be a Captioner (bliptk.load), an architecture name, a hub id or a checkpoint folder; got {type(model).__name__}"
        )
    if load_options is None:
        load_options = {}
    if not isinstance(load_options, dict):
        raise InvalidArgumentError(f"load_options must be a dict of bliptk.load's options, got {type(load_options).__name__}")
    unknown = sorted(set(load_options) - set(_LOAD_OPTIONS))
    if unknown:
        raise option_error(f"unknown load option {unknown[0]!r}; load_options takes {', '.join(_LOAD_OPTIONS)}", "load_options")
    if isinstance(model, Captioner):
        if load_options:
            raise option_error("load_options apply to a model given by name, not to a Captioner", "load_options")
        compiled, dtype, device = model.image_encoder.compiled is not None, model.weights.dtype, model.device
    else:
        compiled, dtype = bool(load_options.get("compile")), str(load_options.get("dtype"))
        device = resolve_device(load_options.get("device"))  # a device this machine lacks, before anything loads
    if options.dtype == "float16" and device.type == "cpu":
        # Trainer's float16 needs a GPU: on a CPU it would train in float32 and record float16.
        raise option_error("dtype float16 trains on a GPU; on a CPU use bfloat16 (autocast) or float32", "dtype")
    if compiled:
        # Freezing copied the weights that training is about to change: it would go on captioning with the old ones.
        raise option_error("fine-tune an uncompiled captioner, then compile the result: bliptk.load(out, compile=True)", "compile")
    if dtype == "int8":
        # Its decoding steps read int8 copies of the weights, which training would leave behind.
        raise option_error("fine-tune a float32 (or bfloat16) captioner, then quantize the result: bliptk.load(out, dtype='int8')", "dtype")
    return load_options


def _check_out(out) -> None:
    if not isinstance(out, str | os.PathLike) or not os.fspath(out):
        raise InvalidArgumentError(f"out must be the output folder, a path; got {out!r}")


def _source(model):
    """The model's own folder, or name, which the output must not be inside."""
    from ..model.captioner import Captioner

    return model.name if isinstance(model, Captioner) else model


def _architecture(model, load_options: dict):
    """The net to train, as shapes: the captioner's own, or the architecture on the meta device
    (no weights, no memory), so that what depends on the net is checked before it loads."""
    from ..model.captioner import Captioner
    from ..model.loading import architecture

    return model.model if isinstance(model, Captioner) else architecture(model)


def _check_prompt(prompt: str) -> None:
    """A training text is ``[DEC]``, the prompt, the caption and ``[SEP]`` in MAX_TEXT_TOKENS positions."""
    from ..core.tokenizer import load_tokenizer

    length = len(load_tokenizer().encode(prompt))
    if length + 2 > MAX_TEXT_TOKENS:
        raise InvalidOptionError(
            f"the prompt takes {length} of the {MAX_TEXT_TOKENS} positions of a training text ([DEC], the prompt, the caption, [SEP]), "
            f"leaving no room for a caption: shorten it",
            command_line={"the prompt takes": "the --prompt takes"},
        )


def _lora_layers(architecture, lora: LoraOptions) -> list[torch.nn.Linear]:
    """The linear layers LoRA adapts (peft matches the whole module name)."""
    pattern = re.compile(lora_pattern(lora))
    return [m for name, m in architecture.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(name)]


def _check_lora_targets(architecture, lora: LoraOptions | None) -> None:
    if lora is not None and not _lora_layers(architecture, lora):
        raise option_error(
            f"lora targets {lora.targets!r} match none of the model's linear layers (their names are like "
            "text_decoder.bert.encoder.layer.0.attention.self.query); leave targets out for every linear layer of the decoder",
            "lora",
        )


def _planned_space(folder: Path, architecture, options: FinetuneOptions, rows: int, validating: bool) -> tuple[int, int]:
    """Refuse a run the disk cannot hold; the bytes of a checkpoint and how many may be alive at once."""
    total = sum(p.numel() for p in architecture.parameters())
    if options.lora is not None:
        lora = options.lora
        trained = sum(lora.r * (layer.in_features + layer.out_features) for layer in _lora_layers(architecture, lora))
        trained += 2 * architecture.config.text_config.hidden_size if lora.train_head_norm else 0
    else:
        frozen = sum(p.numel() for p in architecture.vision_model.parameters()) if options.freeze_vision else 0
        trained = total - frozen
    per_step = options.batch_size * options.gradient_accumulation * int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = max(1, math.ceil(rows / per_step))
    total_steps = options.max_steps or options.epochs * steps_per_epoch
    made = checkpoints_to_make(total_steps, options.save_steps or steps_per_epoch)
    per_checkpoint = checkpoint_bytes(total, trained, lora=options.lora is not None)
    adapter = 4 * trained if options.lora is not None and options.lora.save_adapter else 0
    needed = space_needed(per_checkpoint, 4 * total + adapter, made, options.keep_checkpoints, validating)
    alive = min(made, options.keep_checkpoints + 1 + int(validating))
    check_space(folder, needed, per_checkpoint, alive)
    return per_checkpoint, alive


@contextlib.contextmanager
def _claimed(out, resume: bool, source):
    """The output folder, claimed by the main process (the one that writes); the other processes
    of a ``torchrun`` job write nothing and only name it."""
    if not is_main_process():
        yield Path(out)
        return
    made = not Path(out).exists()
    with claim_run_folder(out, resume, source) as output:
        try:
            yield output.path
        except BaseException:
            if made:  # a run that stopped before writing anything leaves no empty folder behind
                with contextlib.suppress(OSError):
                    output.path.rmdir()
            raise


def _finished_run(folder: Path, model, load_options: dict) -> FinetuneResult | None:
    """The result of the run in ``folder`` when it has finished and its weights are there (resuming
    it trains nothing, loads no model), a captioner given to train in place made the fine-tuned
    one; else None. The base must be the run's, as far as it is known without loading it: a
    captioner's weights, or a name with its source (pretrained or random, and the seed).

    Raises:
        InvalidOptionError: The run was made from another base.
    """
    from ..model.captioner import Captioner

    try:
        made = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    finished = isinstance(made, dict) and made.get("finished") is True
    if not finished or not all((folder / name).is_file() for name in ("config.json", "model.safetensors")):
        return None  # an unfinished run, or one whose weights are gone: resumed from its checkpoint
    base = made.get("base") or {}
    made_weights: dict = base.get("weights") or {}
    if isinstance(model, Captioner):
        weights: dict = model.weights.as_dict()
    else:
        from ..core.models import find_model_spec

        spec = find_model_spec(os.fspath(model))
        pretrained = load_options.get("pretrained", True) and (
            spec is None or spec.hub_id is not None
        )  # the test net has random weights only
        weights = {"source": "pretrained" if pretrained else "random"}
        if not pretrained:
            weights["seed"] = load_options.get("weights_seed", 0)
        made_weights = {key: made_weights.get(key) for key in weights}
        _refuse_differences(folder, "base model", _differences(_identity(base.get("model")), _identity(model)))
    _refuse_differences(folder, "base weights", _differences(made_weights, weights))
    if isinstance(model, Captioner):
        _become(model, folder)
    return FinetuneResult(
        folder,
        list(made.get("history") or []),
        dict(made.get("skipped") or {}),
        undecodable=list(made.get("undecodable") or []),
        best_checkpoint=made.get("best_checkpoint"),
        trainable_parameters=int(made.get("trainable_parameters") or 0),
        total_parameters=int(made.get("total_parameters") or 0),
        finished_before=True,
    )


def _identity(model) -> str | None:
    """A model name as it names a model: an architecture by its name, a folder by its real path."""
    from ..core.models import find_model_spec

    if model is None:
        return None
    text = os.fspath(model)
    spec = find_model_spec(text)
    if spec is not None:
        return spec.name
    return os.path.realpath(Path(text).expanduser()) if Path(text).expanduser().is_dir() else text


def _become(captioner, folder: Path) -> None:
    """Make ``captioner`` the checkpoint in ``folder`` (in its own dtype and device)."""
    from ..model.loading import load

    loaded = load(folder, device=captioner.device, dtype=captioner.weights.dtype)
    captioner.model, captioner.image_encoder, captioner.text_decoder = loaded.model, loaded.image_encoder, loaded.text_decoder
    captioner.name, captioner.weights, captioner.prompt = loaded.name, loaded.weights, loaded.prompt


def _captioner(model, load_options: dict):
    from ..model.captioner import Captioner
    from ..model.loading import load

    return model if isinstance(model, Captioner) else load(model, **load_options)


def _manifest(train: CaptionPairs, val: CaptionPairs | None, options: FinetuneOptions) -> dict:
    """How the run is made: the data, the options, the versions (``finetune.json``; the base weights
    join them once the model is loaded)."""
    import transformers

    from ..version import __version__

    versions = {"bliptk": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    if options.lora is not None:
        import peft

        versions["peft"] = peft.__version__

    def data(pairs):
        return (
            None
            if pairs is None
            else {"source": pairs.source, "rows": len(pairs), "skipped": len(pairs.skipped), "fingerprint": pairs.fingerprint()}
        )

    return {
        "data": {"train": data(train), "val": data(val)},
        "options": options.as_dict(),
        "versions": versions,
    }


# How many checkpoints are kept changes nothing a run makes: a run resumes whatever it keeps.
_RESULT_FREE_OPTIONS = ("keep_checkpoints",)


def _check_resumable(folder: Path, manifest: dict, resume: bool) -> None:
    """A run is resumed only with what made it: the same base weights, data and options."""
    path = folder / MANIFEST_FILE
    if not resume or not path.is_file():
        return
    try:
        made = json.loads(path.read_text())
        if not isinstance(made, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        raise InvalidOptionError(
            f"{path} cannot be read: it is no finetune.json of bliptk's; choose another out", command_line={"another out": "another --out"}
        ) from None
    # The base by its weights (a name can be written otherwise: relative, absolute), the data by its
    # rows and fingerprint (a file of other name can hold the same), options as they train.
    if "base" in manifest:
        _refuse_differences(folder, "base weights", _differences((made.get("base") or {}).get("weights"), manifest["base"]["weights"]))
    data = {name: {k: v for k, v in (part or {}).items() if k != "source"} for name, part in (made.get("data") or {}).items()}
    _refuse_differences(
        folder, "data", _differences(data, {n: {k: v for k, v in (p or {}).items() if k != "source"} for n, p in manifest["data"].items()})
    )
    _refuse_differences(folder, "options", _differences(_comparable(made.get("options") or {}), _comparable(manifest["options"])))


def _comparable(options: dict) -> dict:
    """Options as they decide what a run makes: the dtype None is float32; how many checkpoints are
    kept changes nothing."""
    return {**{k: v for k, v in options.items() if k not in _RESULT_FREE_OPTIONS}, "dtype": options.get("dtype") or "float32"}


def _refuse_differences(folder: Path, what: str, differing: list[str]) -> None:
    if differing:
        shown = "; ".join(differing[:3]) + ("; ..." if len(differing) > 3 else "")
        raise InvalidOptionError(
            f"{folder} holds a run made with other {what} ({shown}); resuming needs the same, or choose another out",
            command_line={"another out": "another --out"},
        )


def _differences(made, asked, where: str = "") -> list[str]:
    """Each value that differs between two manifests' sections, as ``name: made (this run: asked)``."""
    if isinstance(made, dict) and isinstance(asked, dict):
        return [line for key in sorted(set(made) | set(asked)) for line in _differences(made.get(key), asked.get(key), f"{where}{key}.")]
    if made == asked:
        return []
    return [f"{where.rstrip('.') or 'value'} {json.dumps(made)} (this run: {json.dumps(asked)})"]
