"""Loading a Captioner: architecture names, hub ids, local folders, devices and dtypes.

Weights come from, in order: a local checkpoint folder in Hugging Face layout; the Hugging Face
cache; the Hub (unless ``HF_HUB_OFFLINE`` is set). Only safetensors files, or ``torch.load`` with
``weights_only=True`` (``transformers``' default), are read; no remote code is ever run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..core.errors import (
    BliptkError,
    CheckpointError,
    CheckpointNotFoundError,
    DeviceError,
    InvalidArgumentError,
    InvalidOptionError,
    UnknownModelError,
    first_line,
)
from ..core.models import _REGISTRY, DEFAULT_MODEL, ModelSpec, find_model_spec
from ..core.optional import optional
from ..core.pipeline import mark_random_origin
from ..core.preprocess import Preprocessor
from ..core.provenance import Weights
from ..core.tokenizer import load_tokenizer
from .captioner import Captioner
from .compiled import check_compile_cache
from .fingerprint import files_fingerprint, weights_fingerprint
from .image_encoder import ImageEncoder

__all__ = [
    "CAPTIONING_FILE",
    "architecture",
    "blip_config",
    "captioning_settings",
    "checkpoint_identity",
    "checkpoint_prompt",
    "checkpoint_random_origin",
    "load",
    "no_transformers_bars",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_FILES = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "vocab.txt",
    "preprocessor_config.json",
]
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def blip_config(spec: ModelSpec):
    """An architecture's ``transformers.BlipConfig`` (from its shipped ``config.json``)."""
    from transformers import BlipConfig

    return BlipConfig.from_dict(spec.config_dict())


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """Hide ``transformers``' own progress bars (writing and loading weights) while the block runs."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: CUDA when present for None, else the named one, checked to exist.

    Raises:
        DeviceError: The device does not exist on this machine (or the name is not a device).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{device!r} is not a device name (try 'cpu', 'cuda' or 'cuda:0')") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r}: CUDA is not available on this machine; use 'cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device {str(device)!r}: MPS is not available on this machine")
    elif resolved.type != "cpu":
        raise DeviceError(f"device {str(device)!r} is not supported; use 'cpu', 'cuda' or 'mps'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 (default) or bfloat16; float16 is for GPUs and falls back to float32 on CPU."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in _DTYPES:
            raise InvalidOptionError(f"dtype {dtype!r} is not supported; use float32 or bfloat16")
        dtype = _DTYPES[dtype.removeprefix("torch.")]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InvalidOptionError(f"dtype {dtype} is not supported; use float32 or bfloat16")
    if dtype == torch.float16 and device.type == "cpu":
        warnings.warn("float16 is not supported on CPU; using float32 (bfloat16 is the fast CPU dtype)", stacklevel=3)
        return torch.float32
    return dtype


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files ``from_pretrained`` reads: ``model.safetensors``, or the shards its
    index names; none where it would read others (PyTorch files), so that only loading tells."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / shard for shard in shards if "/" not in shard and shard not in ("..", ".")]
    return []


def _run_dtype(dtype: str | torch.dtype | None, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype a loaded net runs in, and the name its weights record: ``int8`` runs in bfloat16,
    with int8 weights for the decoding steps."""
    if dtype in ("int8", torch.int8):
        return torch.bfloat16, "int8"
    resolved = resolve_dtype(dtype, device)
    return resolved, str(resolved).removeprefix("torch.")


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def resolve_checkpoint(model: str) -> Path:
    """The local folder of a checkpoint, downloading it into the Hugging Face cache if needed.

    Args:
        model: A local checkpoint folder, an architecture name, or a hub id.

    Raises:
        UnknownModelError: ``model`` is no folder, no architecture name and no hub id.
        CheckpointNotFoundError: The weights are neither local nor downloadable; the message
            says what was tried and how to fix it.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file() or not _has_weights(folder):
            raise CheckpointNotFoundError(
                f"{folder} is not a checkpoint folder: it needs config.json and model weights "
                "(*.safetensors or pytorch_model.bin), as written by save_pretrained()",
                fixable=False,
            )
        return folder
    spec = find_model_spec(model)
    if spec is not None and spec.hub_id is None:
        raise CheckpointNotFoundError(
            f"{spec.name!r} has no checkpoint: it exists with random weights only (load({spec.name!r}) builds it)", fixable=False
        )
    hub_id: str
    if spec is not None and spec.hub_id is not None:
        hub_id = spec.hub_id
    elif _HUB_ID.match(model):
        hub_id = model
    else:
        raise UnknownModelError(
            f"unknown model {model!r}: not an architecture name ({', '.join(_REGISTRY)}), "
            "not an existing checkpoint folder, and not a hub id"
        )
    return _snapshot(hub_id, known=spec is not None)


def _snapshot(hub_id: str, known: bool = True) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(hub_id, allow_patterns=_CHECKPOINT_FILES, local_files_only=True))
        if _has_weights(folder):
            logger.info("loading %s from the Hugging Face cache at %s", hub_id, folder)
            return folder
    except LocalEntryNotFoundError:
        pass
    from huggingface_hub import constants

    not_a_name = "" if known else f" ({hub_id!r} is not an architecture name either: {', '.join(_REGISTRY)}.)"
    if constants.HF_HUB_OFFLINE:
        raise CheckpointNotFoundError(
            f"checkpoint {hub_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE is set, so the Hub was not asked.{not_a_name}"
        )
    try:
        logger.info("downloading %s from the Hugging Face Hub", hub_id)
        folder = Path(snapshot_download(hub_id, allow_patterns=_CHECKPOINT_FILES, etag_timeout=10))
        if not _has_weights(folder):  # a repo with PyTorch pickles only
            folder = Path(snapshot_download(hub_id, allow_patterns=_CHECKPOINT_FILES + ["pytorch_model*.bin*"], etag_timeout=10))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise CheckpointNotFoundError(
            f"checkpoint {hub_id!r} could not be downloaded from the Hugging Face Hub and is not in the "
            f"cache ({constants.HF_HUB_CACHE}): {str(error).splitlines()[0]}.{not_a_name}"
        ) from None
    if not _has_weights(folder):
        raise CheckpointNotFoundError(f"checkpoint {hub_id!r} on the Hub has no safetensors or PyTorch weights", fixable=False)
    return folder


def _from_pretrained(folder: Path):
    """The model of a checkpoint folder: safetensors when present, else PyTorch files read with
    ``torch.load(weights_only=True)`` (``transformers``' default), never remote code. The config and
    the weights' shapes are checked first, so that a broken folder fails clearly and an absurd
    config allocates nothing."""
    import pickle

    from transformers import BlipForConditionalGeneration

    config, skeleton = _checked_config(folder)
    _check_weight_shapes(folder, skeleton)
    preprocessor_for(folder, config.vision_config.image_size)  # a broken one fails before the weights load
    from transformers.utils import logging as transformers_logging

    use_safetensors = True if any(folder.glob("*.safetensors")) else None
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report: what it says, bliptk says as an error below
    try:
        with no_transformers_bars():  # its "Loading weights" bar: bliptk's commands say what they load in their own words
            loaded: Any = BlipForConditionalGeneration.from_pretrained(
                folder, config=config, use_safetensors=use_safetensors, trust_remote_code=False, output_loading_info=True
            )
        model, loading = loaded
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{folder}: the weights file holds Python objects besides tensors, and bliptk reads PyTorch "
            "weights with torch.load(weights_only=True) only, so it refused to load it. Use a safetensors "
            "file from a source you trust."
        ) from None
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{folder}: its weights cannot be loaded ({first_line(error)}); the checkpoint is damaged or not BLIP's"
        ) from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = sorted(loading["missing_keys"])
    if missing:  # transformers would start them from random values, silently
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(
            f"{folder}: its weights lack {len(missing)} of the architecture's tensors ({', '.join(missing[:3])}{more}); the checkpoint is incomplete"
        )
    return model


def _checked_config(folder: Path):
    """A folder's ``BlipConfig`` and its architecture on the meta device (no memory), checked to
    be a BLIP captioning config that fits in this machine's memory.

    Raises:
        CheckpointError: ``config.json`` is not valid JSON, not a BLIP config, or describes a net
            larger than this machine's memory.
    """
    from transformers import BlipConfig, BlipForConditionalGeneration

    try:
        config = BlipConfig.from_pretrained(folder)
        with torch.device("meta"):
            skeleton = BlipForConditionalGeneration(config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as error:
        raise CheckpointError(f"{folder / 'config.json'} is not a BLIP captioning config: {first_line(error)}") from None
    needed = sum(parameter.numel() for parameter in skeleton.parameters()) * 4  # float32
    memory = _physical_memory()
    if memory is not None and needed > memory:
        raise CheckpointError(
            f"{folder / 'config.json'} describes a net of {needed / 1e9:,.1f} GB in float32, more than this machine's "
            f"{memory / 1e9:,.1f} GB of memory; the config is wrong, or the net needs a larger machine"
        )
    return config, skeleton


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform
        return None


def _check_weight_shapes(folder: Path, skeleton) -> None:
    """Compare the shapes in the folder's safetensors headers with the architecture's, before
    reading any weight.

    Raises:
        CheckpointError: A safetensors file is truncated or not one, or a tensor's shape is not
            the one its config describes (the message names it).
    """
    from safetensors import SafetensorError, safe_open

    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    mismatched = []
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(file, "pt") as weights:
                for name in weights.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    shape = tuple(weights.get_slice(name).get_shape())
                    if name in expected and shape != expected[name]:
                        mismatched.append(f"{name} is {shape}, the config says {expected[name]}")
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{file}: not a readable safetensors file, or truncated ({first_line(error)})") from None
    if mismatched:
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise CheckpointError(f"{folder}: the weights do not fit its config.json: {'; '.join(mismatched[:3])}{more}")


def preprocessor_for(folder: Path | None, image_size: int) -> Preprocessor:
    """The preprocessing of a checkpoint folder (its ``preprocessor_config.json``), else BLIP's.

    Raises:
        CheckpointError: The folder's ``preprocessor_config.json`` is not one.
    """
    config_file = folder / "preprocessor_config.json" if folder is not None else None
    if config_file is None or not config_file.is_file():
        return Preprocessor(image_size)
    try:
        return Preprocessor.from_config(json.loads(config_file.read_bytes().decode("utf-8")), image_size)
    except (UnicodeDecodeError, ValueError, TypeError, AttributeError, KeyError) as error:
        raise CheckpointError(f"{config_file} is not a preprocessor config ({first_line(error)}); fix or remove it") from None


CAPTIONING_FILE = "captioning.json"
"""A checkpoint's captioning defaults, written by fine-tuning: ``{"prompt": "a picture of "}``, the
prompt it was trained after, which [`load()`][bliptk.model.loading.load]'s captioner, the command line and
an ONNX export of it caption after when no prompt is given."""


def checkpoint_prompt(folder: Path | None) -> str | None:
    """The prompt a checkpoint folder says it was trained after (its
    [`CAPTIONING_FILE`][bliptk.model.loading.CAPTIONING_FILE]), or None.

    Raises:
        CheckpointError: The file is there but is not one.
    """
    return _captioning_settings(folder).get("prompt")


def checkpoint_random_origin(folder: Path | None) -> dict | None:
    """The random weights a checkpoint folder says it was fine-tuned from (``{"model": name,
    "seed": seed}``, in its [`CAPTIONING_FILE`][bliptk.model.loading.CAPTIONING_FILE]), or None.

    Raises:
        CheckpointError: The file is there but is not one.
    """
    return _captioning_settings(folder).get("random_origin")


def _captioning_settings(folder: Path | None) -> dict:
    """The [`CAPTIONING_FILE`][bliptk.model.loading.CAPTIONING_FILE] of a checkpoint folder, checked; {} without one."""
    path = folder / CAPTIONING_FILE if folder is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"))
        prompt = settings["prompt"] if isinstance(settings, dict) else None
        if not isinstance(settings, dict) or (prompt is not None and not isinstance(prompt, str)):
            raise ValueError('not {"prompt": text}')
        origin = settings.get("random_origin")
        if origin is not None and not (isinstance(origin, dict) and isinstance(origin.get("model"), str)):
            raise ValueError('random_origin is not {"model": name, "seed": seed}')
    except (UnicodeDecodeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} is not a captioning config ({first_line(error)}); fix or remove it") from None
    return settings


def load(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    weights_seed: int = 0,
    compile: bool = False,
) -> Captioner:
    """Load a BLIP captioning model.

    Args:
        model: ``"ViT-L/16"`` (default) or ``"ViT-B/16"``; a hub id; or a local checkpoint
            folder in Hugging Face layout. ``"tiny"`` builds a small random test model.
        pretrained: False builds the architecture with random weights from the shipped config,
            with no network (the page's uninitialized net).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when present.
        dtype: ``torch.float32`` (default) or ``torch.bfloat16`` (or their names); ``"int8"``:
            bfloat16 with int8 weights for the decoder's steps (CPU; faster than bfloat16 at batch
            1 only, see the Performance guide).
        weights_seed: Seed of the random weights when they are random (the sampling seed is a
            decoding option, [`DecodingOptions.seed`][bliptk.core.decoding.DecodingOptions]).
        compile: Compile the image encoder with inductor and freezing
            ([`ImageEncoder.compile_forward()`][bliptk.model.image_encoder.ImageEncoder.compile_forward]): the
            first batch of each size pays the compile time, later ones run the compiled code,
            which is faster on some CPUs and not on others (see the Performance guide). Where it
            cannot compile, bliptk says so once and runs eager.

    Returns:
        A [`Captioner`][bliptk.model.captioner.Captioner] in eval mode.

    Raises:
        UnknownModelError: A model name that is no architecture, folder or hub id.
        CheckpointNotFoundError: Weights neither in a folder, the cache, nor downloadable.
        DeviceError: A device that does not exist on this machine.
        InvalidOptionError: A dtype bliptk cannot use.
    """
    model = _model_name(model)
    if not model.strip():
        raise UnknownModelError(f"a model is needed: an architecture name ({', '.join(_REGISTRY)}), a hub id or a checkpoint folder")
    optional("transformers")
    check_compile_cache(compiling=compile)
    resolved_device = resolve_device(device)
    resolved_dtype, dtype_name = _run_dtype(dtype, resolved_device)
    spec: ModelSpec | None = find_model_spec(model)
    folder: Path | None = None
    if spec is not None and (not pretrained or spec.hub_id is None):
        net = _random_net(blip_config(spec), weights_seed)
        pretrained = False
        logger.info("built %s with random weights (seed %d)", spec.name, weights_seed)
    elif not pretrained:
        folder = Path(model).expanduser()
        net = _random_net(_folder_config(folder, model), weights_seed)
    else:
        folder = resolve_checkpoint(model)
        checkpoint_prompt(folder)  # a broken captioning.json fails before the weights load
        net = _from_pretrained(folder)
    # The fingerprint is taken before the dtype conversion: it names the weights, the dtype is said apart.
    fingerprint = weights_fingerprint(net)
    net = net.to(device=resolved_device, dtype=resolved_dtype).eval()
    # compiled: asked for, the same however it then runs (see Weights).
    weights = Weights("pretrained" if pretrained else "random", None if pretrained else weights_seed, fingerprint, dtype_name, compile)

    tokenizer = load_tokenizer(folder if folder is not None and (folder / "vocab.txt").is_file() else None)
    preprocessor = preprocessor_for(folder, net.config.vision_config.image_size)
    encoder = ImageEncoder(net.vision_model, preprocessor)
    name = spec.name if spec is not None else model
    captioner = Captioner(net, tokenizer, encoder, name=name, weights=weights, prompt=checkpoint_prompt(folder))
    origin = checkpoint_random_origin(folder) if pretrained else None
    if origin is not None:  # fine-tuned from random weights: its captions are said as random weights' are
        mark_random_origin(fingerprint, origin)
    if dtype_name == "int8":
        captioner.text_decoder.quantize()
    if compile:
        encoder.compile_forward()
    return captioner


def checkpoint_identity(
    model: str | os.PathLike,
    *,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    compile: bool = False,
) -> tuple[str, Weights, str | None] | None:
    """What [`load()`][bliptk.model.loading.load] with these arguments would give as the captioner's
    ``name``, ``weights`` and ``prompt``, read from the checkpoint's files without loading it: the
    weights' fingerprint from its safetensors files
    ([`files_fingerprint()`][bliptk.model.fingerprint.files_fingerprint]). For a resumed job with
    nothing left to do, which needs to know only that its records were made with these weights.

    Returns:
        ``(name, weights, prompt)``; None where only loading can tell: random weights (built, not
        read), a checkpoint without safetensors files, or one that is not at hand or not sound
        (loading says what is wrong with it).
    """
    from safetensors import SafetensorError

    model = _model_name(model)
    spec = find_model_spec(model)
    if not pretrained or (spec is not None and spec.hub_id is None):
        return None
    try:
        folder = resolve_checkpoint(model)
        files = _weight_files(folder)
        fingerprint = files_fingerprint(_checked_config(folder)[1], files) if files else None
        prompt = checkpoint_prompt(folder)
    except (BliptkError, SafetensorError, OSError, ValueError, KeyError) as unreadable:  # loading says what is wrong
        logger.debug("the checkpoint's identity is left to loading: %s", unreadable)
        return None
    if fingerprint is None:
        return None
    dtype_name = _run_dtype(dtype, resolve_device(device))[1]
    name = spec.name if spec is not None else model
    return name, Weights("pretrained", None, fingerprint, dtype_name, compile), prompt


def save_checkpoint(
    model, tokenizer, preprocessor: Preprocessor, folder: str | os.PathLike, prompt: str | None = None, random_origin: dict | None = None
) -> Path:
    """Write a checkpoint folder as Hugging Face does, which [`load()`][bliptk.model.loading.load] and
    ``BlipForConditionalGeneration.from_pretrained`` both read: ``config.json`` and
    ``model.safetensors`` (``model``, a ``BlipForConditionalGeneration``), ``vocab.txt`` and
    ``preprocessor_config.json``; with ``prompt``, the [`CAPTIONING_FILE`][bliptk.model.loading.CAPTIONING_FILE]
    that says it (and, with ``random_origin``, the random weights ``{"model": name, "seed": seed}`` it
    was fine-tuned from). Every file gets the umask's permissions.

    Returns:
        The folder.
    """
    import shutil

    from ..store.outputs import share

    folder = Path(folder)
    model.save_pretrained(folder)
    shutil.copy(tokenizer.vocab_file, folder / "vocab.txt")
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor.to_config()))
    if prompt is not None or random_origin is not None:
        (folder / CAPTIONING_FILE).write_text(json.dumps(captioning_settings(prompt, random_origin)))
    for written in folder.iterdir():
        if written.is_file():
            share(written)
    return folder


def captioning_settings(prompt: str | None, random_origin: dict | None = None) -> dict:
    """What a checkpoint's [`CAPTIONING_FILE`][bliptk.model.loading.CAPTIONING_FILE] holds: its prompt and,
    for weights fine-tuned from random ones, those (``{"model": name, "seed": seed}``)."""
    return {"prompt": prompt} if random_origin is None else {"prompt": prompt, "random_origin": random_origin}


def _model_name(model) -> str:
    """A model as a string (a name, a hub id or a folder), or the error that says what it can be."""
    if not isinstance(model, str | os.PathLike):
        raise InvalidArgumentError(
            f"model must be an architecture name ({', '.join(_REGISTRY)}), a hub id or a checkpoint folder; got {type(model).__name__}"
        )
    return os.fspath(model)


def _folder_config(folder: Path, model: str):
    """The ``BlipConfig`` of a folder holding a ``config.json`` (checked as ``_checked_config()``
    checks it)."""
    if not (folder / "config.json").is_file():
        raise UnknownModelError(
            f"unknown model {model!r}: not an architecture name ({', '.join(_REGISTRY)}) and not a folder with a config.json"
        )
    return _checked_config(folder)[0]


def _random_net(config, seed: int):
    """The architecture with seeded random weights, leaving torch's global generator alone."""
    from transformers import BlipForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BlipForConditionalGeneration(config)


def architecture(model: str | os.PathLike = DEFAULT_MODEL):
    """The architecture of a model on the meta device: shapes and layers, no weights, no memory.

    For net information of a checkpoint that is not at hand (the page's
    ``NetModel[..., "ParametersInformation"]``): an architecture name or a hub id of the family
    (shipped configs), a folder with a ``config.json``, or another hub id (its checkpoint is
    resolved as [`load()`][bliptk.model.loading.load] would).

    Raises:
        UnknownModelError, CheckpointNotFoundError: As for [`load()`][bliptk.model.loading.load].
    """
    from transformers import BlipForConditionalGeneration

    model = _model_name(model)
    optional("transformers")
    check_compile_cache()
    spec = find_model_spec(model)
    if spec is not None:
        config = blip_config(spec)
    else:
        folder = Path(model).expanduser()
        config = _folder_config(folder if folder.is_dir() else resolve_checkpoint(model), model)
    with torch.device("meta"):
        return BlipForConditionalGeneration(config)
