"""Exporting a captioner to ONNX (torch's dynamo exporter), checked against torch.

[`export()`][bliptk.model.exporting.export] writes a folder of three graphs, the tokenizer, the preprocessing config and a
manifest:

* ``encoder.onnx``: pixels ``(B, 3, S, S)`` -> image features ``(B, N, D)``;
* ``image_kv.onnx``: features ``(B, N, D)`` -> the image keys and values of every cross-attention
  layer, ``(B, H, N, Dh)`` each, computed once per image (a graph of its own rather than outputs of
  the encoder, so that pooled video frames, or any features, get their keys and values too);
* ``decoder.onnx``: one decoder call: token ids ``(B, S)``, each sequence's left padding ``(B,)``,
  the self-attention cache (``past_key_i``, ``past_value_i``: ``(B, H, P, Dh)``) and the image keys
  and values in; the logits of the token after the last input ``(B, V)`` and the grown cache
  (``present_key_i``, ...) out. Batch, new tokens, past length and image tokens are dynamic.

Each graph is a trace of bliptk's own torch code: the image encoder's forward, the text decoder's
[`image_keys_values()`][bliptk.model.text_decoder.TextDecoder.image_keys_values], and its [`run()`][bliptk.model.text_decoder.TextDecoder.run] over a cache
that grows by concatenation. No maths is written here.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.decoding import DEFAULT_PROMPT
from ..core.errors import ExampleNotFoundError, ExportError, OutputError, OutputExistsError
from ..core.optional import optional
from ..core.quiet import quiet_loggers
from ..exported.runtime import FORMAT, FORMAT_VERSION, GRAPHS, is_export, load, sha256
from ..store.outputs import Output, claim, folder_contents, refuse_inside, share, write_folder_whole
from .text_decoder import GrowingCache, TracedKernels

__all__ = ["OPSET", "TOLERANCE", "claim_export_folder", "export"]

logger = logging.getLogger(__name__)

OPSET = 20
"""The ONNX opset of the exported graphs."""
TOLERANCE = {"features": 1e-3, "logits": 1e-3}
"""How far ONNX Runtime's float32 results may stand from torch's (max abs difference), checked by
[`export()`][bliptk.model.exporting.export] on a real photo; measured differences go into the manifest."""


class _Encoder(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values):
        return self.encoder.forward.__wrapped__(self.encoder, pixel_values)  # without inference_mode: exportable


class _ImageKeysValues(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, features):
        keys, values = self.decoder.image_keys_values.__wrapped__(self.decoder, features)
        return (*keys, *values)


class _DecoderStep(nn.Module):
    """[`TextDecoder.run()`][bliptk.model.text_decoder.TextDecoder.run] with the cache as inputs and outputs. The head's weight is a copy of
    its own, not the word embeddings' tied one: tied, one initializer feeds a Gather and the head's
    MatMul, and quantize_dynamic leaves the head a float MatMul behind a dequantize (the int8 step
    was 1.6x slower that way)."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.head_weight = nn.Parameter(decoder.lm.cls.predictions.decoder.weight.detach().clone(), requires_grad=False)

    def forward(self, input_ids, padding, past_keys: list, past_values: list, cross_keys: list, cross_values: list):
        cache = GrowingCache(past_keys, past_values)
        kernels = TracedKernels(self.decoder, self.head_weight)
        logits = self.decoder.run(input_ids, past_keys[0].shape[2], cache, cross_keys, cross_values, padding, kernels)
        return (logits, *cache.keys, *cache.values)


def _names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_key_{i}" for i in range(layers)] + [f"{prefix}_value_{i}" for i in range(layers)]


def _programs(captioner) -> list[tuple[nn.Module, tuple, list[str], list[str], dict]]:
    """Each graph's module, example inputs, input and output names, and dynamic dimensions."""
    encoder, decoder = captioner.image_encoder, captioner.text_decoder
    layers, heads, head_dim = len(decoder.layers), decoder.num_heads, decoder.head_dim
    tokens, width = encoder.feature_shape
    dim = torch.export.Dim
    batch, image_tokens, new_tokens, past = dim("batch"), dim("image_tokens"), dim("new_tokens"), dim("past")
    generator = torch.Generator().manual_seed(0)
    # Example sizes of 2 and more: torch.export specialises dimensions of size 0 and 1.
    rows, steps, past_length = 2, 3, 5

    def random(*shape):
        return torch.randn(*shape, generator=generator)

    step_inputs = (
        torch.randint(1000, 2000, (rows, steps), generator=generator),
        torch.tensor([0, 2]),
        [random(rows, heads, past_length, head_dim) for _ in range(layers)],
        [random(rows, heads, past_length, head_dim) for _ in range(layers)],
        [random(rows, heads, tokens, head_dim) for _ in range(layers)],
        [random(rows, heads, tokens, head_dim) for _ in range(layers)],
    )
    past_spec, cross_spec = [{0: batch, 2: past}] * layers, [{0: batch, 2: image_tokens}] * layers
    step_names = [
        "input_ids",
        "padding",
        *[f"past_key_{i}" for i in range(layers)],
        *[f"past_value_{i}" for i in range(layers)],
        *_names(layers, "cross"),
    ]
    step_dynamic = {
        "input_ids": {0: batch, 1: new_tokens},
        "padding": {0: batch},
        "past_keys": past_spec,
        "past_values": past_spec,
        "cross_keys": cross_spec,
        "cross_values": cross_spec,
    }
    return [
        (
            _Encoder(encoder).eval(),
            (random(2, 3, encoder.image_size, encoder.image_size),),
            ["pixel_values"],
            ["features"],
            {"pixel_values": {0: batch}},
        ),
        (
            _ImageKeysValues(decoder).eval(),
            (random(2, tokens, width),),
            ["features"],
            _names(layers, "cross"),
            {"features": {0: batch, 1: image_tokens}},
        ),
        (_DecoderStep(decoder).eval(), step_inputs, step_names, ["logits", *_names(layers, "present")], step_dynamic),
    ]


def export(captioner, folder, *, int8: bool = False, overwrite: bool = False) -> Path:
    """Export a captioner to a folder of ONNX graphs, and check the export.

    The check runs a real photo through both runtimes and compares the image features and the
    decoder's logits (prompt and one more token) against torch: the largest differences and the
    tolerance ([`TOLERANCE`][bliptk.model.exporting.TOLERANCE]) go into ``manifest.json``, with the model, the weights'
    fingerprint, the captioner's own prompt (a fine-tuned checkpoint's), the opset, the bliptk
    version and each graph's sha256. The folder is written whole or not at all: an export that
    fails leaves the folder as it was.

    Args:
        captioner: A float32 [`Captioner`][bliptk.model.captioner.Captioner] (on any device: a CPU copy is exported).
        folder: Where to write (created), or an [`Output`][bliptk.store.outputs.Output] that
            [`claim_export_folder()`][bliptk.model.exporting.claim_export_folder] claimed already.
        int8: Also write dynamically quantized copies (``*.int8.onnx``: ONNX Runtime's
            ``quantize_dynamic``, int8 weights per channel), which [`load()`][bliptk.exported.runtime.load]
            runs with ``dtype="int8"``.
        overwrite: Replace an existing export in ``folder``.

    Returns:
        The folder.

    Raises:
        MissingDependencyError: ``onnx``, ``onnxscript`` or ``onnxruntime`` is not installed.
        InvalidOptionError: The captioner is not float32.
        OutputExistsError: ``folder`` holds an export and ``overwrite`` is False.
        OutputError: ``folder`` holds something else (a checkpoint, a fine-tuning run, other
            files), is the model's own folder, or another process writes it.
        ExportError: The export does not match torch within the tolerance.
    """
    from ..core.errors import InvalidArgumentError, option_error
    from .captioner import Captioner

    if not isinstance(captioner, Captioner):
        raise InvalidArgumentError(f"export needs a Captioner, as bliptk.load(model) returns; got {type(captioner).__name__}")
    for needed in ("onnx", "onnxscript", "onnxruntime"):
        optional(needed)
    if captioner.dtype != torch.float32 or captioner.weights.dtype != "float32":
        raise option_error(f"export a float32 captioner (this one: {captioner.weights.dtype}); load it with dtype='float32'", "dtype")
    output = folder if isinstance(folder, Output) else claim_export_folder(folder, overwrite, captioner.name)
    try:
        captioner = _on_cpu(captioner)
        write_folder_whole(output.path, lambda building: _write_export(captioner, building, int8), "the export")
    finally:
        if output is not folder:
            output.close()
    logger.info("exported %s to %s", captioner.name, output.path)
    return output.path


def _write_export(captioner, folder: Path, int8: bool) -> None:
    """Write the graphs, the tokenizer, the preprocessing config and the manifest into ``folder``."""
    _write_graphs(captioner, folder)
    manifest = _write_manifest(captioner, folder)
    manifest["check"] = _check(captioner, folder)
    if int8:
        manifest["int8_graphs"] = _quantize(folder)
        manifest["sha256"].update({name: sha256(folder / name) for name in manifest["int8_graphs"].values()})
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for file in folder.iterdir():
        share(file)  # the tokenizer copied from the package keeps no mode of the package's


def claim_export_folder(folder, overwrite: bool = False, source=None) -> Output:
    """Claim the folder an export is written to, before any work (and before the model loads):
    locked against every other bliptk process; it can be written, it is no file, it is not the
    model's own folder (``source``) nor inside it; an export in it is replaced only with
    ``overwrite``, and a folder holding anything else (a checkpoint, a fine-tuning run, other
    files) is refused, since an export's folder holds the export alone.

    Raises:
        OutputLockedError, OutputError, OutputExistsError: As [`claim()`][bliptk.store.outputs.claim], and
            as above.
    """
    output = claim(Path(folder).expanduser(), folder=True, replace=True)
    try:
        refuse_inside(output.path, source)
        held = folder_contents(output.path)
        if held is not None and not is_export(output.path):
            raise OutputError(f"{output.given} holds {held}; an export goes in a folder of its own: choose another (new or empty) folder")
        if held is not None and not overwrite:
            raise OutputExistsError(output.given, "pass overwrite=True to replace it", "pass --overwrite to replace it")
        others = sorted(_not_the_exports(output.path)) if held is not None else []
        if others:  # replacing the export replaces the folder: what else it holds would go with it
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise OutputError(
                f"{output.given} holds an ONNX export and {len(others)} other file{'s' if len(others) > 1 else ''} ({shown}), which "
                "replacing the export would remove: move them out, or choose another folder"
            )
    except BaseException:
        output.close()
        raise
    return output


def _not_the_exports(folder: Path) -> set[str]:
    """What a folder holding an export holds besides the export's own files."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        own = {"manifest.json", str(manifest.get("tokenizer")), str(manifest.get("preprocessor"))}
        own |= {str(name) for table in ("graphs", "int8_graphs") for name in dict(manifest.get(table) or {}).values()}
    except (OSError, ValueError, TypeError):
        own = {"manifest.json"}
    return {entry.name for entry in folder.iterdir()} - own


def _on_cpu(captioner):
    """The captioner, or a copy of it on the CPU: the graphs are traced there, and checked against it."""
    if captioner.device.type == "cpu":
        return captioner
    copied = copy.copy(captioner)
    copied.model = copy.deepcopy(captioner.model).cpu()
    copied.image_encoder = copy.deepcopy(captioner.image_encoder).cpu()
    copied.text_decoder = copy.deepcopy(captioner.text_decoder).cpu()
    return copied


def _write_manifest(captioner, folder: Path) -> dict:
    """Write the tokenizer, the preprocessing config and the manifest (the model, its weights, the
    shapes, each graph's sha256) beside the graphs; the manifest."""
    from ..version import __version__

    shutil.copy(captioner.tokenizer.vocab_file, folder / "vocab.txt")
    (folder / "preprocessor_config.json").write_text(json.dumps(captioner.preprocessor.to_config(), indent=1))
    decoder, encoder = captioner.text_decoder, captioner.image_encoder
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bliptk_version": __version__,
        "opset": OPSET,
        "model": captioner.name,
        "weights": captioner.weights.as_dict(),
        "prompt": captioner.prompt,
        "config": {
            "layers": len(decoder.layers),
            "heads": decoder.num_heads,
            "head_dim": decoder.head_dim,
            "image_size": encoder.image_size,
            "image_tokens": encoder.feature_shape[0],
            "max_positions": decoder.max_positions,
        },
        "graphs": dict(GRAPHS),
        "tokenizer": "vocab.txt",
        "preprocessor": "preprocessor_config.json",
        "sha256": {name: sha256(folder / name) for name in GRAPHS.values()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _write_graphs(captioner, folder: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings(), quiet_loggers("torch.onnx", "torch.export", "onnxscript"):
        warnings.simplefilter("ignore")  # the exporter's own deprecation notes
        for (module, arguments, inputs, outputs, dynamic), name in zip(_programs(captioner), GRAPHS.values(), strict=True):
            program = torch.onnx.export(
                module,
                arguments,
                dynamo=True,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                verbose=False,
            )
            if program is None:  # the dynamo exporter returns None only when asked not to export
                raise ExportError(f"{folder / name}: torch.onnx.export wrote no graph")
            program.save(str(folder / name), external_data=False)


def _first_logits(backend, pixels: np.ndarray, prompt: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """A backend's features of ``pixels`` and its logits after the prompt and one more token
    (greedy), through the decoding engine's own interface."""
    features = backend.encode(pixels)
    decoder = backend.decoder
    state = decoder.start(decoder.image_keys_values(features), prompt.shape[1] + 1, None, np.array([0]))
    first, _ = decoder.step(state, prompt)
    second, _ = decoder.step(state, first.argmax(-1)[:, None])
    return features, [first, second]


def _check(captioner, folder: Path) -> dict:
    """Run one photo through torch and the exported graphs; the largest differences, which must
    be within [`TOLERANCE`][bliptk.model.exporting.TOLERANCE]."""
    from ..core.files import example_path

    photo: object
    try:
        photo = example_path("images/woman-with-cake.jpg")
    except ExampleNotFoundError:  # an installed bliptk without the notebooks: any picture will do
        photo = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    pixels = captioner.preprocessor.arrays([photo])
    prompt = np.array([captioner.tokenizer.encode(DEFAULT_PROMPT)])
    features, logits = _first_logits(captioner, pixels, prompt)
    onnx_features, onnx_logits = _first_logits(load(folder), pixels, prompt)
    features_difference = float(np.abs(onnx_features - features).max())
    logits_difference = max(float(np.abs(ours - theirs).max()) for ours, theirs in zip(onnx_logits, logits, strict=True))
    check = {"features_max_abs_diff": features_difference, "logits_max_abs_diff": logits_difference, "tolerance": dict(TOLERANCE)}
    if features_difference > TOLERANCE["features"] or logits_difference > TOLERANCE["logits"]:
        raise ExportError(f"{folder}: the export does not match torch within the tolerance: {check}")
    return check


def _quantize(folder: Path) -> dict:
    """Dynamically quantized copies of the graphs (int8 weights per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    written = {}
    with quiet_loggers(""):  # the root logger: quantize_dynamic advises pre-processing on every call
        for name, file in GRAPHS.items():
            target = file.replace(".onnx", ".int8.onnx")
            quantize_dynamic(folder / file, folder / target, weight_type=QuantType.QInt8, per_channel=True)
            written[name] = target
    return written
