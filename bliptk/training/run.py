"""One fine-tuning run on ``transformers``' ``Trainer``: the model prepared (frozen parts, LoRA,
checkpointing), BLIP's examples and batches, the trainer set up with the COCO metrics, its
checkpoints marked complete, trained, the result saved, and the captioner made the trained one.

[`finetune()`][bliptk.training.finetune.finetune] checks everything first, then hands the run to
[`FinetuneRun`][bliptk.training.run.FinetuneRun]. This module imports ``Trainer``, which imports torch's
compiler (and makes its cache folder): it is imported only once that folder is known to work.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from ..core.decoding import paper_decoding
from ..core.errors import BliptkError, DataWarning, InputError, OutputError, first_line
from ..core.quiet import quiet_loggers, stderr_of_children_kept
from ..model.loading import CAPTIONING_FILE, captioning_settings, no_transformers_bars
from ..store.outputs import reason, share, write_whole
from .data import CaptionPairs, image_key, text_example
from .folder import MANIFEST_FILE, is_main_process, mark_complete, remove_torn, resumable_checkpoint
from .options import HEAD_NORM, FinetuneOptions, FinetuneResult, lora_pattern

__all__ = ["FinetuneRun"]


class _Examples(torch.utils.data.Dataset):
    """Training examples: preprocessed pixels and BLIP's text labels. An image that fails to decode
    gives its name and why, which the batch leaves out and reports."""

    def __init__(self, pairs: CaptionPairs, preprocessor, tokenizer, prompt: str):
        self.pairs, self.preprocessor, self.tokenizer, self.prompt = pairs, preprocessor, tokenizer, prompt

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        from ..core.preprocess import load_image

        image = self.pairs.images[index]
        try:
            pixels = self.preprocessor.array(load_image(image))
        except (BliptkError, OSError, ValueError) as error:
            name = str(image) if isinstance(image, str | os.PathLike) else f"{self.pairs.source} row {index}"
            return {"undecodable": name, "reason": first_line(error)}
        input_ids, labels = text_example(self.tokenizer, self.prompt, self.pairs.captions[index])
        return {"pixel_values": pixels, "input_ids": input_ids, "labels": labels}


class _Collator:
    """Rows into a batch: texts padded on the right (``[PAD]``, attention 0, label -100). An image
    that did not decode is left out of its batch and named once (a
    [`DataWarning`][bliptk.core.errors.DataWarning]); a batch left with none is ``{"no_images": n}``,
    which the trainer skips."""

    def __init__(self):
        self.undecodable: dict[str, str] = {}
        self.failed = 0

    def __call__(self, rows: list) -> dict:
        kept = [row for row in rows if "undecodable" not in row]
        for row in rows:
            if "undecodable" in row:
                self._left_out(row["undecodable"], row["reason"])
        if not kept:
            return {"no_images": torch.tensor(len(rows))}
        width = max(len(row["input_ids"]) for row in kept)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([row[key] + [value] * (width - len(row[key])) for row in kept])

        return {
            "pixel_values": torch.from_numpy(np.stack([row["pixel_values"] for row in kept])),
            "input_ids": pad("input_ids", 0),
            "attention_mask": torch.tensor([[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"])) for row in kept]),
            "labels": pad("labels", -100),
        }

    def _left_out(self, name: str, why: str) -> None:
        self.failed += 1
        if name not in self.undecodable:
            self.undecodable[name] = why
            warnings.warn(f"{name}: does not decode ({why}); left out of its batch, training goes on", DataWarning, stacklevel=2)


class FinetuneRun:
    """One fine-tuning run: the model prepared (frozen parts, LoRA, checkpointing), the Trainer
    set up, trained, the result saved, and the captioner made the trained one."""

    def __init__(
        self,
        captioner,
        train: CaptionPairs,
        val: CaptionPairs | None,
        options: FinetuneOptions,
        folder: Path,
        manifest: dict,
        name: str,
    ):
        self.captioner, self.train_pairs, self.val_pairs = captioner, train, val
        self.options, self.folder, self.manifest, self.name = options, folder, manifest, name
        # The random weights this run descends from (None: from pretrained ones), said by its checkpoints.
        self.random_origin: dict | None = manifest.get("random_origin")

    def train(self, resume: bool) -> FinetuneResult:
        last = resumable_checkpoint(self.folder / "checkpoints") if resume else None
        model = self._prepared_model()
        try:
            trainer = self._trainer(model, evaluate_first=last is None)  # a resumed run has its first evaluation
            if is_main_process():
                self._write_manifest({"finished": False})
            # Trainer's warnings here are about itself (the tied output embedding missing from a checkpoint
            # it reloads as best, how it orders checkpoints); the weights' own bars would interleave with ours.
            with (
                quiet_loggers("transformers.trainer", "transformers.trainer_utils"),
                no_transformers_bars(),
                self.progress,
                warnings.catch_warnings(),
            ):
                # DDP's note on its buckets' memory layout: nothing for the user to do
                warnings.filterwarnings("ignore", message=".*Grad strides do not match bucket view strides.*")
                trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
            result = self._result(trainer, model)
            model = self._finished(trainer.model)
            if trainer.is_world_process_zero():
                self._save(model)
                state: dict = {"history": result.history, "skipped": result.skipped, "undecodable": result.undecodable}
                state |= {"trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters}
                self._write_manifest({"finished": True, **state, "best_checkpoint": result.best_checkpoint})
            trainer.accelerator.wait_for_everyone()
        except BaseException:  # a kill, Ctrl-C, a full disk: the captioner must not pass for what it no longer is
            self._in_place(_without_adapters(model), finished=False)
            raise
        self._in_place(model, finished=True)
        return result

    def _result(self, trainer, model) -> FinetuneResult:
        collator = trainer.data_collator
        skipped = {"train": len(self.train_pairs.skipped) + collator.failed}
        if self.val_pairs is not None:
            skipped["val"] = len(self.val_pairs.skipped)
        return FinetuneResult(
            self.folder,
            [dict(entry) for entry in trainer.state.log_history],
            skipped,
            undecodable=sorted(collator.undecodable),
            trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
            # peft keeps the head norm's original beside its trained copy: count the model once.
            total_parameters=sum(p.numel() for name, p in model.named_parameters() if ".original_module." not in name),
            best_checkpoint=trainer.state.best_model_checkpoint,
            step_seconds=self.progress.step_seconds,
            images_per_step=self.options.batch_size * self.options.gradient_accumulation,
            steps=trainer.state.global_step,
        )

    def _prepared_model(self):
        from transformers import set_seed

        options = self.options
        model = self.captioner.model.float().train()
        model.text_decoder.label_smoothing = options.label_smoothing  # what its loss reads
        model.config.text_config.label_smoothing = options.label_smoothing
        if options.freeze_vision:
            model.vision_model.requires_grad_(False)
        if options.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        if options.lora is None:
            return model
        from peft import LoraConfig, get_peft_model

        lora = options.lora
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_pattern(lora),
            bias="none",
            modules_to_save=[HEAD_NORM] if lora.train_head_norm else None,
        )
        set_seed(options.seed)  # the adapters' initial values are the run's, seeded as the rest of it
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
            save_total_limit=options.keep_checkpoints,  # the best is kept besides, by Trainer's rotation
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
            prompt=options.prompt,
            random_origin=self.random_origin,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        self.progress = _Progress(options.batch_size * options.gradient_accumulation)
        trainer.add_callback(self.progress)
        return trainer

    def _finished(self, model):
        """The trained net, LoRA merged into it (its adapter saved first, on request)."""
        if self.options.lora is None:
            return model.eval()
        if self.options.lora.save_adapter and is_main_process():
            with _saving(self.folder / "adapter"):
                model.save_pretrained(str(self.folder / "adapter"))
                for file in (self.folder / "adapter").iterdir():
                    share(file)
        return model.merge_and_unload().eval()

    def _save(self, model) -> None:
        """The final weights as a checkpoint (with the prompt it learned), moved into the folder
        only once written whole: a failed save leaves no half checkpoint there."""
        from ..model.loading import save_checkpoint

        building = Path(tempfile.mkdtemp(dir=self.folder, prefix=".final.", suffix=".tmp"))
        try:
            with _saving(self.folder), no_transformers_bars():
                save_checkpoint(
                    model,
                    self.captioner.tokenizer,
                    self.captioner.preprocessor,
                    building,
                    prompt=self.options.prompt,
                    random_origin=self.random_origin,
                )
                for file in building.iterdir():
                    os.replace(file, self.folder / file.name)
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def _in_place(self, net, finished: bool) -> None:
        """The captioner becomes ``net``, as a captioner of it is loaded: in eval mode, in its own
        dtype, every weight taking gradients (for explanations), fingerprinted in float32 as loading
        fingerprints saved weights. A finished run's is ``bliptk.load(out)``'s (its name and prompt
        too); a run that stopped midway leaves a captioner whose fingerprint says what its weights
        are now (the base's again when training left them as they were: LoRA's adapters removed)."""
        from dataclasses import replace

        from ..core.pipeline import mark_random_origin
        from ..model.fingerprint import weights_fingerprint
        from ..model.image_encoder import ImageEncoder
        from ..model.text_decoder import TextDecoder

        captioner = self.captioner
        fingerprint = weights_fingerprint(net)
        # Random weights that training left as they were (lr 0, LoRA's base after a stop) are still the
        # random weights, said so by the captioner itself; marking their bytes as "fine-tuned from random"
        # would mark every copy of them. Weights it changed are said when they caption, as their checkpoint is.
        still_random = captioner.weights.source == "random" and fingerprint == captioner.weights.fingerprint
        if self.random_origin is not None and not still_random:
            mark_random_origin(fingerprint, self.random_origin)
        net = net.to(torch.bfloat16 if captioner.weights.dtype == "bfloat16" else torch.float32).eval().requires_grad_(True)
        captioner.model = net
        captioner.image_encoder = ImageEncoder(net.vision_model, captioner.preprocessor)
        captioner.text_decoder = TextDecoder(net.text_decoder)
        if finished:
            captioner.name, captioner.prompt = self.name, self.options.prompt
            if not still_random:
                captioner.weights = replace(captioner.weights, source="pretrained", seed=None, fingerprint=fingerprint)
        else:
            captioner.weights = replace(captioner.weights, fingerprint=fingerprint)

    def _write_manifest(self, state: dict) -> None:
        text = json.dumps({**self.manifest, **state}, indent=1)
        write_whole(self.folder / MANIFEST_FILE, lambda path: path.write_text(text))


def _without_adapters(model):
    """The base net of a model LoRA's adapters wrap, without them: its weights as they were, the
    head norm's original too (peft's ``unload`` would keep its trained copy); any other net as it is."""
    if not (hasattr(model, "peft_config") and hasattr(model, "unload")):
        return model
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.original_module)
    return model.unload()


@contextlib.contextmanager
def _saving(folder: Path):
    """Turn a failed save (a full disk: an OSError, or torch's and safetensors' RuntimeError) into
    one line naming the folder."""
    try:
        yield
    except Exception as problem:  # OSError, torch's RuntimeError, safetensors' SafetensorError: each a failed write
        cause = reason(problem) if isinstance(problem, OSError) else first_line(problem)
        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < 2**20:
                cause = "the disk is full"
        raise OutputError(
            f"{folder}: cannot save the fine-tuned weights ({cause}); free space, then resume=True to save them",
            command_line={"resume=True": "--resume"},
        ) from None


class _CaptionTrainer(Trainer):
    """``Trainer`` whose evaluation adds the COCO caption metrics of the model as it stands, whose
    checkpoints are marked complete once saved whole (and removed when they fail to save), and
    which skips a batch none of whose images decoded."""

    def __init__(self, *args, caption_metrics=None, prompt: str = "", random_origin: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.caption_metrics, self.prompt, self.random_origin = caption_metrics, prompt, random_origin
        # BLIP's loss is a mean over the batch's learned tokens; it takes no token count.
        self.model_accepts_loss_kwargs = False
        self._trained_since_log = 0
        self._last_batch: dict | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        if "no_images" not in inputs:
            self._trained_since_log += 1
            self._last_batch = inputs
            return super().training_step(model, inputs, num_items_in_batch)
        if self.args.world_size == 1:  # no gradient: AdamW leaves every weight as it was
            return torch.zeros((), device=self.args.device)
        if self._last_batch is None:
            raise InputError("the first training batch", "none of its images decode, and the other processes wait for its gradients")
        # The other processes wait for this one's gradients: zero gradients, through the model as DDP needs.
        loss = model(**self._last_batch).loss * 0
        self.accelerator.backward(loss)
        return loss.detach()

    def log(self, logs: dict, start_time=None) -> None:
        if "loss" in logs:
            if self._trained_since_log == 0:  # only batches without images since the last log: no loss to say
                logs = {key: value for key, value in logs.items() if key not in ("loss", "grad_norm")}
            self._trained_since_log = 0
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if "no_images" in inputs:
            return None, None, None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        checkpoint = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                # A checkpoint is captioned after the prompt it is learning, as the finished run is.
                (checkpoint / CAPTIONING_FILE).write_text(json.dumps(captioning_settings(self.prompt, self.random_origin)))
                mark_complete(checkpoint)
        except Exception as problem:  # OSError, torch's RuntimeError, safetensors' SafetensorError: each a failed write
            raise remove_torn(checkpoint, problem) from None

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        if self.caption_metrics is not None:
            scores = {f"eval_{name}": value for name, value in self.caption_metrics(self.model).items()}
            metrics.update(scores)
            self.log(scores)
        return metrics


class _Progress(TrainerCallback):
    """One progress bar (``tqdm.auto``) with the loss and images per second, on the main process;
    every process records the time of each step (the bar: [`progress_bar()`][bliptk.core.progress.progress_bar],
    whose saved notebook output reads its final state)."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.bar: Any = None  # tqdm.auto's bar: a notebook's widget bar or a terminal's
        self.step_seconds: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        from ..core.progress import progress_bar

        if state.is_world_process_zero:
            self.bar = progress_bar(total=state.max_steps, initial=state.global_step, desc="fine-tuning", unit="step")

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
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also when training fails: the bar's line ends before the error is said


def _decodes(image) -> bool:
    """Whether an image decodes; one that does not is named in a DataWarning."""
    from ..core.preprocess import load_image

    try:
        load_image(image)
    except (BliptkError, OSError, ValueError) as error:
        warnings.warn(f"{image}: does not decode ({first_line(error)}); left out of the validation metrics", DataWarning, stacklevel=2)
        return False
    return True


def _caption_metrics(captioner, val: CaptionPairs, prompt: str):
    """The COCO metrics of the model as it trains, on ``val`` with the paper's decoding (beam 3, 5
    to 20 tokens counting the prompt's: 1 to 16 new tokens after "a picture of "); None without the
    ``eval`` extra."""
    import importlib.util

    if importlib.util.find_spec("pycocoevalcap") is None:
        return None
    from ..analysis.evaluation import evaluate
    from ..model.captioner import Captioner
    from ..model.image_encoder import ImageEncoder

    decoding = paper_decoding(captioner.tokenizer, prompt)
    images = {image_key(image): image for image in val.images}
    # An image that does not decode is named, and neither captioned nor among the references.
    references = {key: captions for key, captions in val.references().items() if _decodes(images[key])}
    keys = list(references)

    if not keys:
        return None

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
                captions = current.caption([images[key] for key in keys], options=decoding)
        finally:
            if merged:
                model.unmerge_adapter()
            model.train()
        predictions = [{"image_id": key, "caption": caption.text} for key, caption in zip(keys, captions, strict=True)]
        with stderr_of_children_kept():
            scores = evaluate(predictions, [{"image_id": key, "captions": refs} for key, refs in references.items()])
        return dict(scores.metrics)

    return measure
