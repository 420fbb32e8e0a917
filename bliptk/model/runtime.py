"""The torch runtime's registration entry ([`bliptk.captioning.runtimes`][bliptk.captioning.runtimes]): a model
described by [`LoadOptions`][bliptk.captioning.runtimes.LoadOptions], loaded as a
[`Captioner`][bliptk.model.captioner.Captioner] by [`bliptk.model.loading`][bliptk.model.loading]."""

from __future__ import annotations

import json
from pathlib import Path

from ..captioning.runtimes import LoadOptions, ModelDescription
from ..core.models import find_model_spec
from ..core.preprocess import Preprocessor
from . import loading
from .captioner import Captioner

__all__ = ["describe_model", "load_model"]


def load_model(options: LoadOptions) -> Captioner:
    """Load ``options``' model into torch (on ``options.threads`` threads, when given)."""
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    return loading.load(
        options.model,
        pretrained=options.pretrained,
        device=options.device,
        dtype=options.dtype,
        weights_seed=options.weights_seed,
        compile=options.compile,
    )


def describe_model(options: LoadOptions) -> ModelDescription:
    """The preprocessing and prompt a model loads with, without loading it: the registry's
    architectures use BLIP's preprocessing (their checkpoints' ``preprocessor_config.json`` holds its
    defaults), a checkpoint folder its own files; a hub id outside the registry gets BLIP's."""
    spec = find_model_spec(options.model)
    if spec is not None:
        return ModelDescription(Preprocessor(spec.image_size), None)
    folder = Path(options.model).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        return ModelDescription(Preprocessor(), None)
    image_size = json.loads(config.read_text())["vision_config"].get("image_size", 384)
    return ModelDescription(loading.preprocessor_for(folder, image_size), loading.checkpoint_prompt(folder))
