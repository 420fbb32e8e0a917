"""Fine-tuning a captioner on image-caption pairs, in full or with LoRA, through ``transformers``'
``Trainer`` (checkpoints, resume, gradient accumulation, mixed precision, ``torchrun``) and ``peft``.

BLIP's recipe (``configs/caption_coco.yaml``): the prompt ``"a picture of "`` masked from the loss,
AdamW with weight decay 0.05 and a cosine schedule, label smoothing 0.1, lr 1e-5 (ViT-B/16) or
2e-6 (ViT-L/16). The output folder is a checkpoint in Hugging Face layout (``bliptk.load(out)``,
``BlipForConditionalGeneration.from_pretrained(out)``) with a ``finetune.json`` of how it was made.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from .errors import InvalidOptionError, OutputExistsError, check_positive_int, option_error, require
from .outputs import checked_output, write_whole
from .quiet import no_transformers_bars, quiet_loggers, stderr_of_children_kept
from .training_data import CaptionPairs, image_key, read_pairs, text_example

if TYPE_CHECKING:
    from .records import OutputLock

__all__ = ["DEFAULT_LORA_TARGETS", "HEAD_NORM", "VISION_LORA_TARGETS", "FinetuneOptions", "FinetuneResult", "LoraOptions", "finetune"]

DEFAULT_LORA_TARGETS = (
    r"text_decoder\.bert\.encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|crossattention\.self\.(query|key|value)"
    r"|crossattention\.output\.dense|intermediate\.dense|output\.dense)"
)
"""LoRA's default targets (a regular expression over module names): every linear layer of the text
decoder's blocks, self-attention, cross-attention and feed-forward; not the word embeddings."""
VISION_LORA_TARGETS = r"vision_model\.encoder\.layers\.\d+\.(self_attn\.(qkv|projection)|mlp\.fc1|mlp\.fc2)"
"""The image encoder's linear layers, added to the targets by ``LoraOptions(vision=True)``."""
HEAD_NORM = "cls.predictions.transform.LayerNorm"
"""The prediction head's LayerNorm, trained whole beside the adapters by default (``2 x D`` weights).
The output layer shares the frozen word embeddings, so this norm's scale is what can sharpen the
next-token distribution: without it LoRA cannot memorise even six captions on the random test net,
whose logits its frozen norm keeps within a few units."""


@dataclass(frozen=True)
class LoraOptions:
    """Low-rank adapters (``peft``) instead of training every weight.

    Attributes:
        r: The adapters' rank.
        alpha: Their scale numerator (the update is ``alpha / r * B A``).
        dropout: Dropout on the adapters' input.
        targets: A regular expression of the modules to adapt (default
            [`DEFAULT_LORA_TARGETS`][bliptk.finetuning.DEFAULT_LORA_TARGETS]).
        vision: Adapt the image encoder's linear layers too.
        save_adapter: Also save the adapter alone, in ``out/adapter`` (the folder itself holds the
            merged weights, which ``bliptk.load`` and the ONNX export take unchanged).
        train_head_norm: Train the prediction head's LayerNorm
            ([`HEAD_NORM`][bliptk.finetuning.HEAD_NORM]) beside the adapters.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: str = DEFAULT_LORA_TARGETS
    vision: bool = False
    save_adapter: bool = False
    train_head_norm: bool = True

    def __post_init__(self):
        check_positive_int("lora r", self.r)
        check_positive_int("lora alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise option_error(f"lora dropout must be in [0, 1), got {self.dropout!r}", "lora")


@dataclass(frozen=True)
class FinetuneOptions:
    """How [`finetune()`][bliptk.finetuning.finetune] trains (see its arguments)."""

    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 0
    prompt: str = "a picture of "
    label_smoothing: float = 0.1
    lora: LoraOptions | None = None
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    dtype: str | None = None
    seed: int = 0
    save_steps: int | None = None

    def __post_init__(self):
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("gradient_accumulation", self.gradient_accumulation)
        if self.max_steps is not None:
            check_positive_int("max_steps", self.max_steps)
        if self.save_steps is not None:
            check_positive_int("save_steps", self.save_steps)
        for name in ("lr", "weight_decay", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise option_error(f"{name} must be a non-negative number, got {value!r}", name)
            object.__setattr__(self, name, float(value))  # 0 is 0.0: transformers' configs take floats only
        if self.label_smoothing >= 1:
            raise option_error(f"label_smoothing must be below 1, got {self.label_smoothing!r}", "label_smoothing")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise option_error(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}", "warmup_steps")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise option_error(f"dtype must be float32, bfloat16 (autocast) or float16 (GPUs), got {self.dtype!r}", "dtype")
        if not isinstance(self.prompt, str):
            raise option_error(f"prompt must be a string, got {type(self.prompt).__name__}", "prompt")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    """What a fine-tuning run made.

    Attributes:
        out: The output folder (a checkpoint: ``bliptk.load(result.out)``).
        history: ``Trainer``'s log, one dict per logged step or evaluation (``loss``,
            ``learning_rate``, ``eval_loss``, the COCO metrics as ``eval_CIDEr``...).
        skipped: Rows of the training and validation data left out, by name.
        trainable_parameters: Parameters trained (LoRA: the adapters' and the head norm's).
        total_parameters: All parameters of the model trained.
        best_checkpoint: The checkpoint kept as best (by the COCO CIDEr, else the validation
            loss), None without validation data.
        step_seconds: The wall time of each optimizer step of this run (a resumed run: its own).
        images_per_step: Training images per optimizer step and process (batch size times
            gradient accumulation).
    """

    out: Path
    history: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)
    trainable_parameters: int = 0
    total_parameters: int = 0
    best_checkpoint: str | None = None
    step_seconds: list[float] = field(default_factory=list)
    images_per_step: int = 0

    @property
    def images_per_second(self) -> float:
        """Training images per second per process, the median step's (the first step, which warms up, left out)."""
        steps = self.step_seconds[1:] or self.step_seconds
        return self.images_per_step / float(np.median(steps)) if steps else float("nan")

    def load(self, **load_options):
        """The fine-tuned [`Captioner`][bliptk.captioner.Captioner] (``bliptk.load(out)``)."""
        from .loading import load

        return load(self.out, **load_options)

    def plot(self, ax=None):
        """The training loss against the step, with the validation loss (and CIDEr on a second
        axis, when measured).

        Args:
            ax: A matplotlib axes to draw on; None makes a new figure.

        Returns:
            The figure.
        """
        from .figures import new_figure

        if ax is None:
            ax = new_figure(figsize=(6, 3.5), layout="constrained").subplots()
        train = [(e["step"], e["loss"]) for e in self.history if "loss" in e]
        val = [(e["step"], e["eval_loss"]) for e in self.history if "eval_loss" in e]
        if train:
            ax.plot(*zip(*train, strict=True), label="training loss")
        if val:
            ax.plot(*zip(*val, strict=True), marker="o", label="validation loss")
        handles, labels = ax.get_legend_handles_labels()
        cider = [(e["step"], e["eval_CIDEr"]) for e in self.history if "eval_CIDEr" in e]
        if cider:
            twin = ax.twinx()
            twin.plot(*zip(*cider, strict=True), color="C2", marker="s", label="CIDEr")
            twin.set_ylabel("CIDEr")
            more_handles, more_labels = twin.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        # One legend for both axes, under the plot: inside, it would cover the curves' first points.
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(labels), fontsize=8, frameon=False)
        return ax.figure


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

    Args:
        model: A [`Captioner`][bliptk.captioner.Captioner] (trained in place), or anything
            [`bliptk.load()`][bliptk.loading.load] takes.
        train: The training pairs: see [`read_pairs()`][bliptk.training_data.read_pairs].
        out: The output folder: a checkpoint once the run ends, ``checkpoints/`` while it runs.
        val: Validation pairs: the loss at every checkpoint (each epoch by default) and, with the
            ``eval`` extra, the COCO metrics (beam 3, 5 to 20 tokens) before training and at each
            checkpoint; the best checkpoint is the one kept.
        images: The folder a data file's image paths are relative to (default its own).
        resume: Continue the run in ``out`` from its last checkpoint (after a kill).
        load_options: For a model given by name: what [`bliptk.load()`][bliptk.loading.load] gets
            besides (``pretrained=False``, ``device``...). The output and the data are checked
            before the model loads.
        **options: [`FinetuneOptions`][bliptk.finetuning.FinetuneOptions]: ``epochs`` (5),
            ``max_steps`` (None: the epochs decide), ``batch_size`` (8, per process),
            ``gradient_accumulation`` (1), ``lr`` (1e-5), ``weight_decay`` (0.05), ``warmup_steps``
            (0), ``prompt`` ("a picture of "), ``label_smoothing`` (0.1), ``lora`` (None; a
            [`LoraOptions`][bliptk.finetuning.LoraOptions], a dict of its fields, or a rank),
            ``freeze_vision``, ``gradient_checkpointing``, ``dtype`` (None: float32;
            ``"bfloat16"`` autocast), ``seed`` (0), ``save_steps`` (None: each epoch).

    Returns:
        A [`FinetuneResult`][bliptk.finetuning.FinetuneResult].

    Raises:
        OutputExistsError: ``out`` holds another run (or a finished one) and ``resume`` is off.
        InvalidOptionError: An option out of range, or ``resume`` of a run made otherwise.
        InputError: Data with no usable row, or that cannot be read.
        MissingDependencyError: ``accelerate`` (or ``peft`` for LoRA) is not installed.
    """
    settings = _options(options)
    _refuse_compiled(model, load_options or {})
    require("accelerate")
    if settings.lora is not None:
        require("peft")
    folder = _checked_folder(out, resume)
    train_pairs = read_pairs(train, images, name="train")
    val_pairs = None if val is None else read_pairs(val, images, name="val")
    captioner = _captioner(model, load_options or {})
    manifest = _manifest(captioner, train_pairs, val_pairs, settings)
    _check_resumable(folder, manifest, resume)
    with _Lock(folder):
        return _Run(captioner, train_pairs, val_pairs, settings, folder, manifest).train(resume)


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


def is_main_process() -> bool:
    """Whether this is the process that writes (rank 0 of a ``torchrun`` job, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def _checked_folder(out, resume: bool) -> Path:
    """The output folder, checked before any model loads: writable, and holding no other run unless resuming."""
    folder = checked_output(out, folder=True, replace=True)
    if folder.exists() and any(folder.iterdir()) and not resume:
        made = "a finished fine-tuning run" if (folder / "config.json").is_file() else "files"
        raise OutputExistsError(
            folder, f"it holds {made}: pass resume=True to continue it, or another out", "pass --resume, or another --out"
        )
    if is_main_process():
        folder.mkdir(exist_ok=True)
    return folder


def _captioner(model, load_options: dict):
    from .captioner import Captioner
    from .loading import load

    if isinstance(model, Captioner):
        if load_options:
            raise option_error("load_options apply to a model given by name, not to a Captioner", "load_options")
        return model
    return load(model, **load_options)


def _refuse_compiled(model, load_options: dict) -> None:
    """Freezing copied the weights that training is about to change: a compiled captioner would go
    on captioning with the old ones."""
    from .captioner import Captioner

    compiled = model.image_encoder.compiled is not None if isinstance(model, Captioner) else bool(load_options.get("compile"))
    if compiled:
        raise option_error("fine-tune an uncompiled captioner, then compile the result: bliptk.load(out, compile=True)", "compile")


def _manifest(captioner, train: CaptionPairs, val: CaptionPairs | None, options: FinetuneOptions) -> dict:
    """How the run is made: the base weights, the data, the options, the versions (``finetune.json``)."""
    import transformers

    from . import __version__

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
        "base": {"model": captioner.name, "weights": captioner.weights.as_dict()},
        "data": {"train": data(train), "val": data(val)},
        "options": options.as_dict(),
        "versions": versions,
    }


def _check_resumable(folder: Path, manifest: dict, resume: bool) -> None:
    """A run is resumed only with what made it: the same base weights, data and options."""
    path = folder / "finetune.json"
    if not resume or not path.is_file():
        return
    try:
        made = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InvalidOptionError(f"{path} cannot be read: it is no finetune.json of bliptk's; choose another out") from None
    for key in ("base", "data", "options"):
        if made.get(key) != manifest[key]:
            raise InvalidOptionError(
                f"{folder} holds a run made with other {'base weights' if key == 'base' else key} "
                f"({json.dumps(made.get(key))[:120]}); resuming needs the same, or choose another out"
            )


class _Lock:
    """One writer per output folder; only the main process of a ``torchrun`` job writes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock: OutputLock | None = None

    def __enter__(self):
        from .records import OutputLock

        if is_main_process():
            self.lock = OutputLock(self.folder / "finetune")
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()


class _Examples(torch.utils.data.Dataset):
    """Training examples: preprocessed pixels and BLIP's text labels. An image that fails to decode
    gives None, which the batch leaves out and counts."""

    def __init__(self, pairs: CaptionPairs, preprocessor, tokenizer, prompt: str):
        self.pairs, self.preprocessor, self.tokenizer, self.prompt = pairs, preprocessor, tokenizer, prompt

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        from .errors import BliptkError
        from .preprocess import load_image

        try:
            pixels = self.preprocessor.array(load_image(self.pairs.images[index]))
        except (BliptkError, OSError, ValueError):
            return None
        input_ids, labels = text_example(self.tokenizer, self.prompt, self.pairs.captions[index])
        return {"pixel_values": pixels, "input_ids": input_ids, "labels": labels}


class _Collator:
    """Rows into a batch: texts padded on the right (``[PAD]``, attention 0, label -100)."""

    def __init__(self):
        self.failed = 0

    def __call__(self, rows: list) -> dict:
        from .errors import InputError

        kept = [row for row in rows if row is not None]
        self.failed += len(rows) - len(kept)
        if not kept:
            raise InputError("a training batch", f"none of its {len(rows)} images could be decoded")
        width = max(len(row["input_ids"]) for row in kept)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([row[key] + [value] * (width - len(row[key])) for row in kept])

        return {
            "pixel_values": torch.from_numpy(np.stack([row["pixel_values"] for row in kept])),
            "input_ids": pad("input_ids", 0),
            "attention_mask": torch.tensor([[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"])) for row in kept]),
            "labels": pad("labels", -100),
        }


class _Run:
    """One fine-tuning run: the model prepared (frozen parts, LoRA, checkpointing), the Trainer
    set up, trained, and the result saved."""

    def __init__(self, captioner, train: CaptionPairs, val: CaptionPairs | None, options: FinetuneOptions, folder: Path, manifest: dict):
        self.captioner, self.train_pairs, self.val_pairs = captioner, train, val
        self.options, self.folder, self.manifest = options, folder, manifest

    def train(self, resume: bool) -> FinetuneResult:
        from transformers.trainer_utils import get_last_checkpoint

        checkpoints = self.folder / "checkpoints"
        last = get_last_checkpoint(str(checkpoints)) if resume and checkpoints.is_dir() else None
        model = self._prepared_model()
        trainer = self._trainer(model, evaluate_first=last is None)  # a resumed run has its first evaluation
        if is_main_process():
            self._write_manifest({"finished": False})
        # Trainer's warnings here are about itself (the tied output embedding missing from a checkpoint
        # it reloads as best, how it orders checkpoints); the weights' own bars would interleave with ours.
        with quiet_loggers("transformers.trainer", "transformers.trainer_utils"), no_transformers_bars():
            trainer.train(resume_from_checkpoint=last)
        history = [dict(entry) for entry in trainer.state.log_history]
        skipped = {"train": len(self.train_pairs.skipped) + trainer.data_collator.failed}
        if self.val_pairs is not None:
            skipped["val"] = len(self.val_pairs.skipped)
        result = FinetuneResult(
            self.folder,
            history,
            skipped,
            trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
            # peft keeps the head norm's original beside its trained copy: count the model once.
            total_parameters=sum(p.numel() for name, p in model.named_parameters() if ".original_module." not in name),
            best_checkpoint=trainer.state.best_model_checkpoint,
            step_seconds=self.progress.step_seconds,
            images_per_step=self.options.batch_size * self.options.gradient_accumulation,
        )
        if trainer.is_world_process_zero():
            with no_transformers_bars():
                self._save(trainer.model)
            self._write_manifest({"finished": True, "history": history, "skipped": skipped, "best_checkpoint": result.best_checkpoint})
        trainer.accelerator.wait_for_everyone()
        self.captioner.model.eval()
        return result

    def _prepared_model(self):
        options = self.options
        model = self.captioner.model.float().train()
        model.text_decoder.label_smoothing = options.label_smoothing  # what its loss reads
        model.config.text_config.label_smoothing = options.label_smoothing
        if options.freeze_vision:
            model.vision_model.requires_grad_(False)
        if options.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if options.lora is None:
            return model
        from peft import LoraConfig, get_peft_model

        lora = options.lora
        targets = lora.targets + (f"|{VISION_LORA_TARGETS}" if lora.vision else "")
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=f"({targets})",
            bias="none",
            modules_to_save=[HEAD_NORM] if lora.train_head_norm else None,
        )
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)

    def _trainer(self, model, evaluate_first: bool):
        from transformers import TrainingArguments
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        options, encoder, tokenizer = self.options, self.captioner.image_encoder, self.captioner.tokenizer
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        per_step = options.batch_size * options.gradient_accumulation * processes
        interval = options.save_steps or max(1, math.ceil(len(self.train_pairs) / per_step))
        val = self.val_pairs
        validating = val is not None
        metrics = _caption_metrics(self.captioner, val, options.prompt) if val is not None else None
        arguments = TrainingArguments(
            output_dir=str(self.folder / "checkpoints"),
            num_train_epochs=options.epochs,
            max_steps=options.max_steps or -1,
            per_device_train_batch_size=options.batch_size,
            per_device_eval_batch_size=options.batch_size,
            gradient_accumulation_steps=options.gradient_accumulation,
            learning_rate=options.lr,
            weight_decay=options.weight_decay,
            lr_scheduler_type="cosine",
            warmup_steps=options.warmup_steps,
            bf16=options.dtype == "bfloat16",
            fp16=options.dtype == "float16",
            seed=options.seed,
            data_seed=options.seed,
            logging_steps=1,
            save_strategy="steps",
            save_steps=interval,
            save_total_limit=2,
            eval_strategy="steps" if validating else "no",
            eval_steps=interval if validating else None,
            eval_on_start=validating and evaluate_first,  # the base model's loss and metrics: where training starts
            load_best_model_at_end=validating,
            metric_for_best_model=("CIDEr" if metrics is not None else "loss") if validating else None,
            greater_is_better=metrics is not None if validating else None,
            remove_unused_columns=False,
            report_to=[],
            dataloader_num_workers=0,
            ddp_find_unused_parameters=False,
            disable_tqdm=True,
            use_cpu=self.captioner.device.type == "cpu",
            dataloader_pin_memory=self.captioner.device.type == "cuda",
        )
        trainer = _CaptionTrainer(
            model=model,
            args=arguments,
            train_dataset=_Examples(self.train_pairs, encoder.preprocessor, tokenizer, options.prompt),
            eval_dataset=_Examples(val, encoder.preprocessor, tokenizer, options.prompt) if val is not None else None,
            data_collator=_Collator(),
            caption_metrics=metrics,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        self.progress = _Progress(options.batch_size * options.gradient_accumulation)
        trainer.add_callback(self.progress)
        return trainer

    def _save(self, model) -> None:
        """The final weights as a checkpoint folder (LoRA merged; the adapter too on request)."""
        from .loading import save_checkpoint

        if self.options.lora is not None:
            if self.options.lora.save_adapter:
                model.save_pretrained(str(self.folder / "adapter"))
            model = model.merge_and_unload()
        model.eval()
        save_checkpoint(model, self.captioner.tokenizer, self.captioner.preprocessor, self.folder)

    def _write_manifest(self, state: dict) -> None:
        text = json.dumps({**self.manifest, **state}, indent=1)
        write_whole(self.folder / "finetune.json", lambda path: path.write_text(text))


class _CaptionTrainer(Trainer):
    """``Trainer`` whose evaluation adds the COCO caption metrics of the model as it stands."""

    def __init__(self, *args, caption_metrics=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.caption_metrics = caption_metrics
        # BLIP's loss is a mean over the batch's learned tokens; it takes no token count.
        self.model_accepts_loss_kwargs = False

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        if self.caption_metrics is not None:
            scores = {f"eval_{name}": value for name, value in self.caption_metrics(self.model).items()}
            metrics.update(scores)
            self.log(scores)
        return metrics


class _Progress(TrainerCallback):
    """One progress bar (``tqdm.auto``) with the loss and images per second, on the main process;
    every process records the time of each step."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.bar = None
        self.step_seconds: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="fine-tuning", unit="step")

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self.step_started)
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            rate = self.images_per_step * len(self.step_seconds) / sum(self.step_seconds)
            self.bar.set_postfix_str(f"{rate:.1f} images/s", refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_description(f"fine-tuning, loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _caption_metrics(captioner, val: CaptionPairs, prompt: str):
    """The COCO metrics of the model as it trains, on ``val`` with the paper's decoding (beam 3, 5
    to 20 tokens counting the prompt's: 1 to 16 new tokens after "a picture of "); None without the
    ``eval`` extra."""
    import importlib.util

    if importlib.util.find_spec("pycocoevalcap") is None:
        return None
    from .captioner import Captioner
    from .evaluation import evaluate
    from .image_encoder import ImageEncoder

    prompt_tokens = len(captioner.tokenizer.encode(prompt))
    decoding: dict = {"num_beams": 3, "max_new_tokens": max(1, 20 - prompt_tokens), "min_new_tokens": max(0, 5 - prompt_tokens)}
    references = val.references()
    keys = list(references)
    images = {image_key(image): image for image in val.images}

    def measure(model) -> dict:
        merged = hasattr(model, "merge_adapter")
        if merged:  # bliptk's decoder reads the weights: LoRA merged in while it captions
            model.merge_adapter()
        try:
            net = model.get_base_model() if merged else model
            current = Captioner(
                net, captioner.tokenizer, ImageEncoder(net.vision_model, captioner.preprocessor), captioner.name, captioner.weights
            )
            with torch.inference_mode():
                captions = current.caption([images[key] for key in keys], prompt, **decoding)
        finally:
            if merged:
                model.unmerge_adapter()
            model.train()
        predictions = [{"image_id": key, "caption": caption.text} for key, caption in zip(keys, captions, strict=True)]
        with stderr_of_children_kept():
            scores = evaluate(predictions, [{"image_id": key, "captions": refs} for key, refs in references.items()])
        return dict(scores.metrics)

    return measure
