"""Export the captioning nets to ONNX, and caption with ONNX Runtime, with no torch needed at run time.

:func:`export` writes a folder of three graphs, the tokenizer, the preprocessing config and a
manifest:

* ``encoder.onnx``: pixels ``(B, 3, S, S)`` -> image features ``(B, N, D)``;
* ``image_kv.onnx``: features ``(B, N, D)`` -> the image keys and values of every cross-attention
  layer, ``(B, H, N, Dh)`` each, computed once per image (a graph of its own rather than outputs of
  the encoder, so that averaged video frames, or any features, get their keys and values too);
* ``decoder.onnx``: one decoder call: token ids ``(B, S)``, each sequence's left padding ``(B,)``
  (prompts of different lengths share a batch, as in bliptk's engine), the self-attention cache
  (``past_key_i``, ``past_value_i``: ``(B, H, P, Dh)``) and the image keys and values in; the logits
  of the token after the last input ``(B, V)`` and the grown cache (``present_key_i``, ...) out.
  Batch, new tokens, past length and image tokens are dynamic.

:func:`load` returns an :class:`OnnxCaptioner` whose :meth:`~OnnxCaptioner.caption` returns the same
:class:`~bliptk.Caption` records as :meth:`bliptk.Captioner.caption`, decoded by the same engine
(:mod:`bliptk.decoding`: greedy, sampling with a seed, beam search), with ONNX Runtime as the
decoder backend. The runner needs ``onnxruntime``, ``numpy``, ``tokenizers`` and ``Pillow`` only:
nothing on its path imports torch (``pip install 'bliptk[onnx]'``; exporting needs
``'bliptk[export]'`` and torch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batch import caption_files
from .decoding import DEFAULT_PROMPT, Caption, DecodingOptions, decode, group_captions, options_with, request_prompt, requested_captions
from .errors import (
    CheckpointError,
    ExportChangedWarning,
    InvalidOptionError,
    MissingDependencyError,
    OutputExistsError,
    check_positive_int,
    first_line,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "OnnxCaptioner", "export", "load"]

logger = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "bliptk-onnx", 1
GRAPHS = {"encoder": "encoder.onnx", "image_kv": "image_kv.onnx", "decoder": "decoder.onnx"}
OPSET = 20
# How far ONNX Runtime's float32 results may stand from torch's (max abs difference), checked by
# export() on a real photo; measured differences go into the manifest.
TOLERANCE = {"features": 1e-3, "logits": 1e-3}


def is_export(folder) -> bool:
    """Whether ``folder`` is meant as a bliptk ONNX export: it holds a ``manifest.json`` (which
    :func:`load` then checks) and no checkpoint's ``config.json``."""
    folder = Path(os.fspath(folder)).expanduser()
    return (folder / "manifest.json").is_file() and not (folder / "config.json").is_file()


# --- export (torch) ------------------------------------------------------------------------------


def _graphs(captioner):
    """The three torch modules to export, over the captioner's own modules."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    encoder, decoder = captioner.image_encoder, captioner.text_decoder
    heads, head_dim = decoder.num_heads, decoder.head_dim

    def split_heads(x):
        return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    def merge_heads(x):
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], heads * head_dim)

    class Encoder(nn.Module):
        def forward(self, pixel_values):
            return encoder.forward.__wrapped__(encoder, pixel_values)  # without inference_mode: exportable

    class ImageKeysValues(nn.Module):
        def forward(self, features):
            keys, values = [], []
            for layer in decoder.layers:
                keys.append(split_heads(layer.crossattention.self.key(features)))
                values.append(split_heads(layer.crossattention.self.value(features)))
            return tuple(keys) + tuple(values)

    class DecoderStep(nn.Module):
        """TextDecoder.forward's maths with the cache as inputs and outputs. The head's weight is a
        copy of its own, not the word embeddings' tied one: tied, one initializer feeds a Gather and
        the head's MatMul, and quantize_dynamic leaves the head a float MatMul behind a dequantize
        (the int8 step was 1.6x slower that way)."""

        def __init__(self):
            super().__init__()
            self.head_weight = nn.Parameter(decoder.lm.cls.predictions.decoder.weight.detach().clone(), requires_grad=False)

        def forward(self, input_ids, padding, past_keys: list, past_values: list, cross_keys: list, cross_values: list):
            lm = decoder.lm
            embeddings = lm.bert.embeddings
            start = past_keys[0].shape[2]
            end = start + input_ids.shape[1]
            # As TextDecoder.forward: causal within the new tokens; no query sees the left padding of
            # a shorter prompt; a padding slot sees itself only; positions count from each prompt's start.
            positions = torch.arange(start, end)
            slots = torch.arange(end)
            visible = (slots[None, :] >= padding[:, None])[:, None, None, :]
            attention_mask = (visible & (slots[None, :] <= positions[:, None])) | (slots[None, :] == positions[:, None])
            position_ids = (positions[None, :] - padding[:, None]).clamp_min(0)
            hidden = embeddings.LayerNorm(embeddings.word_embeddings(input_ids) + embeddings.position_embeddings(position_ids))
            present_keys, present_values = [], []
            for index, layer in enumerate(decoder.layers):
                attention = layer.attention.self
                keys = torch.cat([past_keys[index], split_heads(attention.key(hidden))], dim=2)
                values = torch.cat([past_values[index], split_heads(attention.value(hidden))], dim=2)
                present_keys.append(keys)
                present_values.append(values)
                context = F.scaled_dot_product_attention(split_heads(attention.query(hidden)), keys, values, attn_mask=attention_mask)
                hidden = layer.attention.output(merge_heads(context), hidden)
                query = split_heads(layer.crossattention.self.query(hidden))
                context = F.scaled_dot_product_attention(query, cross_keys[index], cross_values[index])
                hidden = layer.crossattention.output(merge_heads(context), hidden)
                hidden = layer.output(layer.intermediate(hidden), hidden)
            predictions = lm.cls.predictions
            logits = F.linear(predictions.transform(hidden[:, -1]), self.head_weight, predictions.decoder.bias)
            return (logits,) + tuple(present_keys) + tuple(present_values)

    return Encoder().eval(), ImageKeysValues().eval(), DecoderStep().eval()


def _names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_key_{i}" for i in range(layers)] + [f"{prefix}_value_{i}" for i in range(layers)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def export(captioner, folder, *, int8: bool = False, overwrite: bool = False) -> Path:
    """Export a captioner to a folder of ONNX graphs, and check the export.

    The check runs a real photo through both runtimes and compares the image features and the
    decoder's logits (prompt and one more token) against torch: the largest differences and the
    tolerance (:data:`TOLERANCE`) go into ``manifest.json``, with the model, the weights'
    fingerprint, the opset, the bliptk version and each graph's sha256.

    Args:
        captioner: A float32 :class:`~bliptk.Captioner` on the CPU.
        folder: Where to write (created).
        int8: Also write dynamically quantized copies (``*.int8.onnx``: ONNX Runtime's
            ``quantize_dynamic``, int8 weights per channel), which :func:`load` then uses by
            default.
        overwrite: Replace an existing export in ``folder``.

    Returns:
        The folder.

    Raises:
        MissingDependencyError: ``onnx``, ``onnxscript`` or ``onnxruntime`` is not installed.
        InvalidOptionError: The captioner is not float32 on the CPU, or the export does not match
            torch within the tolerance.
        OutputExistsError: ``folder`` holds an export and ``overwrite`` is False.
    """
    import shutil

    import torch

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise MissingDependencyError("exporting to ONNX needs onnx and onnxscript: pip install 'bliptk[export]'") from None
    _onnxruntime()
    if captioner.dtype != torch.float32 or captioner.device.type != "cpu" or captioner.weights.dtype != "float32":
        raise InvalidOptionError(f"export a float32 captioner on the CPU (this one: {captioner.weights.dtype} on {captioner.device})")
    folder = Path(folder).expanduser()
    if is_export(folder) and not overwrite:
        raise OutputExistsError(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder, decoder = captioner.image_encoder, captioner.text_decoder
    layers, heads, head_dim = len(decoder.layers), decoder.num_heads, decoder.head_dim
    tokens, width = encoder.feature_shape
    encoder_graph, kv_graph, step_graph = _graphs(captioner)
    Dim = torch.export.Dim
    batch, image_tokens, new_tokens, past = Dim("batch"), Dim("image_tokens"), Dim("new_tokens"), Dim("past")
    generator = torch.Generator().manual_seed(0)
    # Example sizes of 2 and more: torch.export specialises dimensions of size 0 and 1.
    pixels = torch.randn(2, 3, encoder.image_size, encoder.image_size, generator=generator)
    features = torch.randn(2, tokens, width, generator=generator)
    rows, steps, past_length = 2, 3, 5
    step_inputs = (
        torch.randint(1000, 2000, (rows, steps), generator=generator),
        torch.tensor([0, 2]),
        [torch.randn(rows, heads, past_length, head_dim, generator=generator) for _ in range(layers)],
        [torch.randn(rows, heads, past_length, head_dim, generator=generator) for _ in range(layers)],
        [torch.randn(rows, heads, tokens, head_dim, generator=generator) for _ in range(layers)],
        [torch.randn(rows, heads, tokens, head_dim, generator=generator) for _ in range(layers)],
    )
    past_spec, cross_spec = [{0: batch, 2: past}] * layers, [{0: batch, 2: image_tokens}] * layers
    exports = (
        (encoder_graph, (pixels,), ["pixel_values"], ["features"], {"pixel_values": {0: batch}}),
        (kv_graph, (features,), ["features"], _names(layers, "cross"), {"features": {0: batch, 1: image_tokens}}),
        (
            step_graph, step_inputs,
            ["input_ids", "padding"] + [f"past_key_{i}" for i in range(layers)]
            + [f"past_value_{i}" for i in range(layers)] + _names(layers, "cross"),
            ["logits"] + _names(layers, "present"),
            {
                "input_ids": {0: batch, 1: new_tokens}, "padding": {0: batch},
                "past_keys": past_spec, "past_values": past_spec, "cross_keys": cross_spec, "cross_values": cross_spec,
            },
        ),
    )
    with torch.no_grad(), warnings.catch_warnings(), _quiet("torch.onnx", "torch.export", "onnxscript"):
        warnings.simplefilter("ignore")  # the exporter's own deprecation notes
        for (module, arguments, inputs, outputs, dynamic), name in zip(exports, GRAPHS.values()):
            program = torch.onnx.export(
                module, arguments, dynamo=True, input_names=inputs, output_names=outputs, dynamic_shapes=dynamic,
                opset_version=OPSET, verbose=False,
            )
            program.save(str(folder / name), external_data=False)
    shutil.copy(captioner.tokenizer.vocab_file, folder / "vocab.txt")
    (folder / "preprocessor_config.json").write_text(json.dumps(captioner.preprocessor.to_config(), indent=1))
    from . import __version__

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "bliptk_version": __version__, "opset": OPSET,
        "model": captioner.name, "weights": captioner.weights.as_dict(),
        "config": {
            "layers": layers, "heads": heads, "head_dim": head_dim, "image_size": encoder.image_size, "image_tokens": tokens,
            "max_positions": decoder.max_positions,
        },
        "graphs": dict(GRAPHS), "tokenizer": "vocab.txt", "preprocessor": "preprocessor_config.json",
        "sha256": {name: _sha256(folder / name) for name in GRAPHS.values()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    manifest["check"] = _check(captioner, folder)
    if int8:
        manifest["int8_graphs"] = _quantize(folder)
        manifest["sha256"].update({name: _sha256(folder / name) for name in manifest["int8_graphs"].values()})
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    logger.info("exported %s to %s", captioner.name, folder)
    return folder


def _check(captioner, folder: Path) -> dict:
    """Run one photo through torch and the exported graphs; the largest differences, which must
    be within :data:`TOLERANCE`."""
    import torch

    from .files import example_path

    runner = load(folder, int8=False)
    try:
        photo = example_path("images/woman-with-cake.jpg")
    except Exception:  # an installed bliptk without the notebooks: any picture will do
        photo = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    pixels = captioner.preprocessor.arrays([photo])
    with torch.inference_mode():
        features = captioner.image_encoder(torch.from_numpy(pixels))
        prompt = torch.tensor([captioner.tokenizer.encode(DEFAULT_PROMPT)])
        state = captioner.text_decoder.start(features, prompt.shape[1] + 1)
        logits = [captioner.text_decoder(prompt, state)[:, -1]]
        next_token = logits[0].argmax(-1, keepdim=True)
        logits.append(captioner.text_decoder(next_token, state)[:, -1])
    onnx_features = runner.encode(pixels)
    onnx_state = runner.decoder.start(onnx_features, prompt.shape[1] + 1, None, np.array([0]))
    onnx_logits = [runner.decoder.step(onnx_state, prompt.numpy())[0], runner.decoder.step(onnx_state, next_token.numpy())[0]]
    check = {
        "features_max_abs_diff": float(np.abs(onnx_features - features.numpy()).max()),
        "logits_max_abs_diff": max(float(np.abs(ours - theirs.numpy()).max()) for ours, theirs in zip(onnx_logits, logits)),
        "tolerance": dict(TOLERANCE),
    }
    if check["features_max_abs_diff"] > TOLERANCE["features"] or check["logits_max_abs_diff"] > TOLERANCE["logits"]:
        raise InvalidOptionError(f"the export does not match torch within the tolerance: {check}")
    return check


def _quantize(folder: Path) -> dict:
    """Dynamically quantized copies of the graphs (int8 weights per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    written = {}
    with _quiet(""):  # the root logger: quantize_dynamic advises pre-processing on every call
        for name, file in GRAPHS.items():
            target = file.replace(".onnx", ".int8.onnx")
            quantize_dynamic(folder / file, folder / target, weight_type=QuantType.QInt8, per_channel=True)
            written[name] = target
    return written


class _quiet:
    """Raise the named loggers to ERROR for a while (the exporter's progress and advice)."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(name) for name in names]

    def __enter__(self):
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for logger, level in zip(self.loggers, self.levels):
            logger.setLevel(level)


# --- the runner (no torch) -----------------------------------------------------------------------


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("ONNX captioning needs ONNX Runtime: pip install 'bliptk[onnx]'") from None
    return onnxruntime


@dataclass
class _State:
    """The decoder's memory between steps, as NumPy arrays (see bliptk.text_decoder.DecoderState)."""

    cross_keys: list[np.ndarray]
    cross_values: list[np.ndarray]
    past_keys: list[np.ndarray]
    past_values: list[np.ndarray]
    padding: np.ndarray | None
    length: int = 0


class _OnnxDecoder:
    """The decoding engine's backend (:class:`bliptk.decoding.DecoderBackend`) over the image
    key/value and decoder graphs."""

    def __init__(self, image_kv, decoder, config: dict):
        self.image_kv, self.decoder = image_kv, decoder
        self.layers, self.heads, self.head_dim = config["layers"], config["heads"], config["head_dim"]
        self.max_positions = config["max_positions"]
        self._outputs = [output.name for output in decoder.get_outputs()]

    def start(self, image_features: np.ndarray, max_length: int, padding: np.ndarray | None, image_rows: np.ndarray) -> _State:
        if max_length > self.max_positions:
            raise InvalidOptionError(f"max_length {max_length} exceeds the decoder's {self.max_positions} positions")
        computed = self.image_kv.run(None, {"features": np.ascontiguousarray(image_features, dtype=np.float32)})
        rows = np.asarray(image_rows)
        cross = [np.ascontiguousarray(array[rows]) for array in computed]
        empty = np.zeros((len(rows), self.heads, 0, self.head_dim), dtype=np.float32)
        return _State(cross[: self.layers], cross[self.layers :], [empty] * self.layers, [empty] * self.layers, padding)

    def step(self, state: _State, input_ids: np.ndarray, return_attention: bool = False):
        if return_attention:
            raise InvalidOptionError("the ONNX runner does not capture cross-attention; use bliptk.load for return_attention")
        padding = state.padding if state.padding is not None else np.zeros(len(input_ids), dtype=np.int64)
        feed = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64), "padding": np.ascontiguousarray(padding, dtype=np.int64)}
        for index in range(self.layers):
            feed[f"past_key_{index}"], feed[f"past_value_{index}"] = state.past_keys[index], state.past_values[index]
            feed[f"cross_key_{index}"], feed[f"cross_value_{index}"] = state.cross_keys[index], state.cross_values[index]
        outputs = self.decoder.run(self._outputs, feed)
        state.past_keys, state.past_values = outputs[1 : 1 + self.layers], outputs[1 + self.layers :]
        state.length += input_ids.shape[1]
        return outputs[0], None

    @staticmethod
    def select(state: _State, rows: np.ndarray) -> _State:
        pick = lambda arrays: [array[rows] for array in arrays]  # noqa: E731
        padding = None if state.padding is None else state.padding[rows]
        return _State(pick(state.cross_keys), pick(state.cross_values), pick(state.past_keys), pick(state.past_values), padding, state.length)


class OnnxCaptioner:
    """Captions with ONNX Runtime from an export. Make one with :func:`load`.

    Attributes:
        name: The model the export was made from.
        weights: Its :class:`~bliptk.provenance.Weights` as a dict (``dtype`` says
            ``"onnx float32"`` or ``"onnx int8"``: records made here are never taken for torch's).
        manifest: The export's manifest.
        tokenizer, preprocessor: As on :class:`~bliptk.Captioner`.
    """

    def __init__(self, folder: Path, manifest: dict, sessions: dict, int8: bool):
        from .preprocess import Preprocessor
        from .tokenizer import load_tokenizer

        self.folder, self.manifest = folder, manifest
        self.name = manifest["model"]
        self.weights = {**manifest["weights"], "dtype": f"onnx {'int8' if int8 else 'float32'}"}
        self.tokenizer = load_tokenizer(_inside(folder, manifest["tokenizer"], "tokenizer"))
        preprocessor = _inside(folder, manifest["preprocessor"], "preprocessor config")
        try:
            config = json.loads(preprocessor.read_bytes().decode("utf-8"))
            self.preprocessor = Preprocessor.from_config(config, manifest["config"]["image_size"])
        except (UnicodeDecodeError, ValueError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{preprocessor}: not a preprocessor config ({first_line(error)}); export the model again") from None
        self.encoder = sessions["encoder"]
        self.decoder = _OnnxDecoder(sessions["image_kv"], sessions["decoder"], manifest["config"])
        self.max_positions = manifest["config"]["max_positions"]
        self.pretrained = manifest["weights"]["source"] == "pretrained"
        self._said_random = False

    def __repr__(self) -> str:
        return f"OnnxCaptioner({self.name!r}, {self.weights['source']} weights, {self.weights['dtype']}, {self.folder})"

    def provenance(self) -> dict:
        return {"model": self.name, "weights": dict(self.weights)}

    def _say_if_random(self) -> None:
        """Warn once, when an export of random weights first captions."""
        if not self.pretrained and not self._said_random:
            from .errors import RandomWeightsWarning

            self._said_random = True
            warnings.warn(f"{self.name} (ONNX export) has random weights: its captions are random words", RandomWeightsWarning, stacklevel=3)

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """Image features ``(B, N, D)`` of preprocessed pixels ``(B, 3, S, S)``."""
        return self.encoder.run(["features"], {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]

    def encode_image(self, images) -> np.ndarray:
        """Image features ``(B, N, D)`` of one image or a list (paths, PIL images, arrays)."""
        return self.encode(self.preprocessor.arrays(images))

    def caption_pixels(self, pixel_values: np.ndarray, options: DecodingOptions) -> list[Caption]:
        """Captions of preprocessed pixels (what :mod:`bliptk.batch` feeds)."""
        return decode(self.decoder, self.tokenizer, self.encode(pixel_values), options)

    # Caption many files, one record per input, resumable: bliptk.batch.caption_files.
    caption_files = caption_files

    def caption(
        self,
        images,
        prompt: str | None | list = None,
        *,
        options: DecodingOptions | None = None,
        batch_size: int = 16,
        num_frames: int = 16,
        pooling: str = "mean",
        **decoding_options,
    ):
        """Caption one image or video, or a list (as :meth:`bliptk.Captioner.caption`, without
        cross-attention capture).

        Args:
            images: An image (path, PIL image, NumPy array) or video file, or a list.
            prompt: None (``"a photography of"``, ``"a video of"`` for a video), a string, or a
                list: one prompt per image of a list, or several for one image.
            options: :class:`~bliptk.DecodingOptions` to start from.
            batch_size: Images encoded and decoded together.
            num_frames: Frames of each video, whose features are averaged.
            pooling: ``"mean"`` (the page's; concatenated frames need bliptk's torch captioner).
            **decoding_options: Fields of :class:`~bliptk.DecodingOptions`.

        Returns:
            A :class:`~bliptk.Caption`, or a list, as :meth:`bliptk.Captioner.caption`.
        """
        from .video import VideoFrames, is_video, video_frames

        self._say_if_random()
        options = options_with(options, **decoding_options)
        check_positive_int("batch_size", batch_size)
        if pooling != "mean":
            raise InvalidOptionError(f"the ONNX runner pools video frames by their mean, not {pooling!r}")
        items, rows, single = requested_captions(images, prompt)
        features = {}
        for item in dict.fromkeys(item for item, _ in rows):
            source = items[item]
            if is_video(source):
                frames = source if isinstance(source, VideoFrames) else video_frames(source, num_frames)
                features[item] = (self.encode_image(list(frames)).mean(axis=0), True)
        still = [item for item in dict.fromkeys(item for item, _ in rows) if item not in features]
        for start in range(0, len(still), batch_size):
            chunk = still[start : start + batch_size]
            features.update((item, (vector, False)) for item, vector in zip(chunk, self.encode_image([items[i] for i in chunk])))

        captions = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            stacked = np.stack([features[item][0] for item, _ in chunk])
            prompts = [request_prompt(text, options, features[item][1]) for item, text in chunk]
            captions += group_captions(decode(self.decoder, self.tokenizer, stacked, options, prompts), options.num_return_sequences)
        return captions[0] if single else captions


# The manifest's fields and their types: what load() checks before it opens anything.
_MANIFEST_FIELDS = {
    "format": str, "format_version": int, "model": str, "weights": dict, "config": dict, "graphs": dict,
    "tokenizer": str, "preprocessor": str, "sha256": dict,
}
_WEIGHTS_FIELDS = {"source": str, "fingerprint": str, "dtype": str}
_CONFIG_FIELDS = ("layers", "heads", "head_dim", "image_size", "image_tokens", "max_positions")


def _read_manifest(folder: Path) -> dict:
    """The export's manifest, each field checked.

    Raises:
        CheckpointError: No manifest, not JSON, a field missing or of the wrong type, or an export
            in a newer format.
    """
    from . import __version__

    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        raise CheckpointError(f"{folder}: not a bliptk ONNX export (no manifest.json); write one with bliptk export --out {folder}")
    try:
        manifest = json.loads(manifest_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_file}: not valid JSON ({error}); export the model again") from None

    def broken(what: str) -> CheckpointError:
        return CheckpointError(f"{manifest_file}: {what}; the export is damaged: export the model again")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder}: manifest.json is not a bliptk ONNX export's (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if isinstance(manifest.get("format_version"), int) and manifest["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: exported by bliptk {manifest.get('bliptk_version')} in format {manifest['format_version']}, newer than this "
            f"bliptk {__version__} reads ({FORMAT_VERSION}); upgrade bliptk"
        )
    for fields, section, where in ((_MANIFEST_FIELDS, manifest, ""), (_WEIGHTS_FIELDS, manifest.get("weights"), "weights.")):
        for name, kind in fields.items():
            if not isinstance(section, dict) or name not in section:
                raise broken(f"{where}{name} is missing")
            if not isinstance(section[name], kind) or isinstance(section[name], bool):
                raise broken(f"{where}{name} must be a {kind.__name__}, not {type(section[name]).__name__}")
    for name in _CONFIG_FIELDS:
        value = manifest["config"].get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise broken(f"config.{name} must be a positive integer, not {value!r}")
    for table in ("graphs", "int8_graphs"):
        graphs = manifest.get(table, {})
        if not isinstance(graphs, dict) or (table == "graphs" and set(graphs) != set(GRAPHS)) or set(graphs) - set(GRAPHS):
            raise broken(f"{table} must name the graphs {', '.join(GRAPHS)}")
    for name, value in [*manifest["graphs"].items(), *manifest.get("int8_graphs", {}).items(), *manifest["sha256"].items()]:
        if not isinstance(value, str):
            raise broken(f"{name} must be a string, not {type(value).__name__}")
    return manifest


def _inside(folder: Path, name: str, what: str) -> Path:
    """The plain file ``name`` names inside the export folder.

    Raises:
        CheckpointError: ``name`` is absolute, climbs out with ``..``, leads out through a link,
            or is not a plain file.
    """
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise CheckpointError(f"{folder}/manifest.json: {what} {name!r} is not a file name inside the export; bliptk reads only its own folder")
    path = folder / relative
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise CheckpointError(f"{folder}: {what} {name} is missing; export the model again") from None
    if not resolved.is_relative_to(folder.resolve()):
        raise CheckpointError(f"{folder}: {what} {name} is a link that leads out of the export ({resolved}); bliptk reads only its own folder")
    if not resolved.is_file():
        raise CheckpointError(f"{folder}: {what} {name} is not a plain file")
    return resolved


def load(folder, *, int8: bool | None = None, threads: int | None = None, verify: bool = True, against=None) -> OnnxCaptioner:
    """Load an export for captioning with ONNX Runtime (no torch needed).

    Only plain files inside the export folder are opened, and each graph only after its sha256
    matches the manifest's.

    Args:
        folder: A folder written by :func:`export`.
        int8: Use the quantized graphs; None uses them when the export has them.
        threads: ONNX Runtime's intra-op threads (None: its default, all cores).
        verify: Check each graph's sha256 against the manifest (a graph without one, or that
            changed since the export, is an error). False loads them unchecked, with an
            :class:`~bliptk.errors.ExportChangedWarning`.
        against: A :class:`~bliptk.Captioner` of the model the export was made from, to warn
            (:class:`~bliptk.errors.ExportChangedWarning`) when its weights changed since (their
            fingerprint is not the manifest's).

    Raises:
        CheckpointError: Not an export; a manifest field missing or wrong; a file outside the
            folder, missing, or whose sha256 is not the manifest's; a graph ONNX Runtime cannot
            read; a manifest from a newer bliptk.
        MissingDependencyError: ONNX Runtime is not installed.
    """
    folder = Path(os.fspath(folder)).expanduser()
    manifest = _read_manifest(folder)
    use_int8 = bool(manifest.get("int8_graphs")) if int8 is None else int8
    if use_int8 and not manifest.get("int8_graphs"):
        raise CheckpointError(f"{folder}: this export has no int8 graphs; export it with int8=True", command_line={"int8=True": "--int8"})
    files = {name: _inside(folder, file, "graph") for name, file in (manifest["int8_graphs"] if use_int8 else manifest["graphs"]).items()}
    if verify:
        for name, path in files.items():
            expected = manifest["sha256"].get(path.name)
            if expected is None:
                raise CheckpointError(f"{folder}: the manifest has no sha256 of {path.name}, so it cannot be checked; export the model again")
            if _sha256(path) != expected:
                raise CheckpointError(f"{folder}: {path.name} is not the graph that was exported (its sha256 differs); export the model again")
    else:
        warnings.warn(f"{folder}: loading its graphs without checking them (verify=False)", ExportChangedWarning, stacklevel=2)
    if against is not None and against.weights.fingerprint != manifest["weights"]["fingerprint"]:
        warnings.warn(
            f"{folder} was exported from weights with fingerprint {manifest['weights']['fingerprint']}; {against.name}'s are now "
            f"{against.weights.fingerprint}: its captions will differ from the export's; export it again", ExportChangedWarning, stacklevel=2,
        )
    return OnnxCaptioner(folder, manifest, _sessions(files, threads), use_int8)


def _sessions(files: dict[str, Path], threads: int | None) -> dict:
    """An ONNX Runtime session per graph file."""
    ort = _onnxruntime()
    session_options = ort.SessionOptions()
    # Threads that spin between runs keep the cores busy for whatever runs next (the other graph,
    # torch, the preprocessing threads): measured up to 2x slower steps; idle threads cost nothing here.
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        session_options.intra_op_num_threads = threads
    sessions = {}
    for name, path in files.items():
        try:
            sessions[name] = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime raises its own (InvalidProtobuf, Fail, ...), none an OSError
            raise CheckpointError(f"{path}: ONNX Runtime cannot read this graph ({first_line(error)}); export the model again") from None
    return sessions
