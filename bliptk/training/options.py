"""What fine-tuning takes and gives: its options ([`FinetuneOptions`][bliptk.training.options.FinetuneOptions],
[`LoraOptions`][bliptk.training.options.LoraOptions]) and its result
([`FinetuneResult`][bliptk.training.options.FinetuneResult]), apart from the training itself
([`bliptk.training.finetune`][bliptk.training.finetune]), so that the options are checked, and the command line
built from them, without importing ``transformers``' ``Trainer``."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import check_positive_int, option_error

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "HEAD_NORM",
    "VISION_LORA_TARGETS",
    "FinetuneOptions",
    "FinetuneResult",
    "LoraOptions",
    "lora_pattern",
]

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


TRAINING_DTYPES = ("float32", "bfloat16", "float16")
"""What fine-tuning computes in: float32, bfloat16 autocast, float16 (GPUs); int8 does not train."""


@dataclass(frozen=True)
class LoraOptions:
    """Low-rank adapters (``peft``) instead of training every weight.

    Attributes:
        r: The adapters' rank.
        alpha: Their scale numerator (the update is ``alpha / r * B A``).
        dropout: Dropout on the adapters' input.
        targets: A regular expression of the modules to adapt (default
            [`DEFAULT_LORA_TARGETS`][bliptk.training.options.DEFAULT_LORA_TARGETS]).
        vision: Adapt the image encoder's linear layers too.
        save_adapter: Also save the adapter alone, in ``out/adapter`` (the folder itself holds the
            merged weights, which ``bliptk.load`` and the ONNX export take unchanged).
        train_head_norm: Train the prediction head's LayerNorm
            ([`HEAD_NORM`][bliptk.training.options.HEAD_NORM]) beside the adapters.
    """

    r: int = field(
        default=16,
        metadata={"flag": "--lora", "metavar": "RANK", "help": "train LoRA adapters of this rank (alpha 2 x rank) instead of every weight"},
    )
    alpha: int = field(default=32, metadata={"flag": None})
    dropout: float = field(default=0.05, metadata={"flag": None})
    targets: str = field(default=DEFAULT_LORA_TARGETS, metadata={"flag": None})
    vision: bool = field(default=False, metadata={"flag": "--lora-vision", "help": "with --lora: adapt the image encoder too"})
    save_adapter: bool = field(
        default=False, metadata={"flag": "--save-adapter", "help": "with --lora: also save the adapter alone in OUT/adapter"}
    )
    train_head_norm: bool = field(default=True, metadata={"flag": None})

    def __post_init__(self):
        check_positive_int("lora r", self.r)
        check_positive_int("lora alpha", self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise option_error(f"lora dropout must be in [0, 1), got {self.dropout!r}", "lora")
        if not isinstance(self.targets, str):
            raise option_error(f"lora targets must be a regular expression (a string), got {type(self.targets).__name__}", "lora")
        try:
            re.compile(self.targets)
        except re.error as error:
            raise option_error(f"lora targets {self.targets!r} is not a regular expression ({error})", "lora") from None


@dataclass(frozen=True)
class FinetuneOptions:
    """How [`finetune()`][bliptk.training.finetune.finetune] trains (see its arguments)."""

    epochs: int = field(default=5, metadata={"help": "passes over the training data"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps (default: the epochs decide)"})
    batch_size: int = field(default=8, metadata={"help": "images per step, per process"})
    gradient_accumulation: int = field(default=1, metadata={"help": "batches per optimizer step"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate (BLIP's for ViT-B/16; 2e-6 for ViT-L/16)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW's weight decay"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up before the cosine schedule"})
    prompt: str = field(default="a picture of ", metadata={"help": "the prompt, masked from the loss, which the model captions after"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the loss"})
    lora: LoraOptions | None = field(default=None, metadata={"flag": None})  # --lora RANK and its companions, below
    freeze_vision: bool = field(default=False, metadata={"help": "train the text decoder only"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass: less memory, more time"}
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": "float32 (default), bfloat16 autocast, float16 (GPUs)", "choices": TRAINING_DTYPES},
    )
    seed: int = field(default=0, metadata={"help": "seed of the data order, dropout and LoRA's initial adapters"})
    save_steps: int | None = field(default=None, metadata={"help": "a checkpoint every this many steps (default: each epoch)"})
    keep_checkpoints: int = field(default=1, metadata={"help": "the newest checkpoints kept on disk, besides the best"})

    def __post_init__(self):
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("gradient_accumulation", self.gradient_accumulation)
        check_positive_int("keep_checkpoints", self.keep_checkpoints)
        if self.max_steps is not None:
            check_positive_int("max_steps", self.max_steps)
        if self.save_steps is not None:
            check_positive_int("save_steps", self.save_steps)
        for name in ("lr", "weight_decay", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise option_error(f"{name} must be a finite non-negative number, got {value!r}", name)
            object.__setattr__(self, name, float(value))  # 0 is 0.0: transformers' configs take floats only
        if self.label_smoothing >= 1:
            raise option_error(f"label_smoothing must be below 1, got {self.label_smoothing!r}", "label_smoothing")
        for name in ("warmup_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise option_error(f"{name} must be a non-negative integer, got {value!r}", name)
        for name in ("freeze_vision", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise option_error(f"{name} must be True or False, got {getattr(self, name)!r}", name)
        if self.dtype is not None and self.dtype not in TRAINING_DTYPES:
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
        skipped: How many rows of the training and validation data were left out (``"train"``,
            ``"val"``): when the data was read, and images that did not decode while training.
        undecodable: The images that did not decode while training (each left out of its batch).
        trainable_parameters: Parameters trained (LoRA: the adapters' and the head norm's).
        total_parameters: All parameters of the model trained.
        best_checkpoint: The checkpoint kept as best (by the COCO CIDEr, else the validation
            loss), None without validation data.
        step_seconds: The wall time of each optimizer step of this run (a resumed run: its own).
        images_per_step: Training images per optimizer step and process (batch size times
            gradient accumulation).
        steps: Optimizer steps the run has made (a step of a batch without images included).
        finished_before: The run had finished before this call (``resume=True``): nothing was trained.
    """

    out: Path
    history: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)
    undecodable: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    total_parameters: int = 0
    best_checkpoint: str | None = None
    step_seconds: list[float] = field(default_factory=list)
    images_per_step: int = 0
    steps: int = 0
    finished_before: bool = False

    @property
    def images_per_second(self) -> float:
        """Training images per second per process, the median step's (the first step, which warms up, left out)."""
        steps = self.step_seconds[1:] or self.step_seconds
        return self.images_per_step / float(np.median(steps)) if steps else float("nan")

    def load(self, **load_options):
        """The fine-tuned [`Captioner`][bliptk.model.captioner.Captioner], loaded from ``out`` (``bliptk.load(out)``)."""
        from ..model.loading import load

        return load(self.out, **load_options)

    def plot(self, ax=None):
        """The training loss against the step, with the validation loss (and CIDEr on a second
        axis, when measured).

        Args:
            ax: A matplotlib axes to draw on; None makes a new figure.

        Returns:
            The figure.
        """
        from ..core.figures import new_figure

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


def lora_pattern(lora: LoraOptions) -> str:
    """LoRA's targets as one regular expression over module names (the vision targets added on request)."""
    return f"({lora.targets}{f'|{VISION_LORA_TARGETS}' if lora.vision else ''})"
