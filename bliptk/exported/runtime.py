"""Captioning from an ONNX export with ONNX Runtime: no torch anywhere on this path.

[`load()`][bliptk.exported.runtime.load] checks an export (its manifest field by field, every file inside its folder, each graph
against its sha256) and returns an [`OnnxCaptioner`][bliptk.exported.runtime.OnnxCaptioner]: a caption backend
([`CaptionBackend`][bliptk.captioning.backend.CaptionBackend]) whose decoder runs the exported graphs, under the very
pipeline and decoding engine that torch's [`Captioner`][bliptk.model.captioner.Captioner] runs under.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..captioning.backend import CaptionBackend
from ..captioning.runtimes import RUNTIMES, LoadOptions, ModelDescription
from ..core.decoding import ImageKeysValues
from ..core.errors import CheckpointError, ExportChangedWarning, InvalidOptionError, first_line, option_error
from ..core.optional import optional
from ..core.preprocess import Preprocessor
from ..core.provenance import Weights
from ..core.tokenizer import load_tokenizer
from ..store.outputs import folder_contents

__all__ = ["DTYPES", "FORMAT", "FORMAT_VERSION", "GRAPHS", "OnnxCaptioner", "is_export", "describe_model", "load", "load_model", "sha256"]

FORMAT, FORMAT_VERSION = "bliptk-onnx", 1
GRAPHS = {"encoder": "encoder.onnx", "image_kv": "image_kv.onnx", "decoder": "decoder.onnx"}
"""The graphs of an export, by role, and their file names (int8 copies: ``*.int8.onnx``)."""
DTYPES = RUNTIMES["onnx"].dtypes
"""The graphs an export can run: float32 (the default: an image's caption is the same alone and in
any batch), or int8, dynamically quantized, whose activations are quantized per tensor, so that
an image's caption can change with what else is in its batch."""


def is_export(folder) -> bool:
    """Whether ``folder`` is meant as a bliptk ONNX export: it holds a ``manifest.json`` (which
    [`load()`][bliptk.exported.runtime.load] then checks) and no checkpoint's ``config.json``."""
    folder = Path(os.fspath(folder)).expanduser()
    return (folder / "manifest.json").is_file() and not (folder / "config.json").is_file()


def sha256(path: Path) -> str:
    """The sha256 of a file, as the manifest records it."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _onnxruntime():
    return optional("onnxruntime")


# --- the decoder backend --------------------------------------------------------------------------------


@dataclass
class _State:
    """The decoder's memory between steps, as NumPy arrays: the images' keys and values, and the
    self-attention cache, which the decoder graph grows by one step's tokens each call."""

    cross_keys: list[np.ndarray]
    cross_values: list[np.ndarray]
    past_keys: list[np.ndarray]
    past_values: list[np.ndarray]
    padding: np.ndarray | None
    length: int = 0


class _OnnxDecoder:
    """The decoding engine's backend ([`bliptk.core.decoding.DecoderBackend`][bliptk.core.decoding.DecoderBackend]) over the image
    key/value and decoder graphs."""

    def __init__(self, image_kv, decoder, config: dict):
        self.image_kv, self.decoder = image_kv, decoder
        self.layers, self.heads, self.head_dim = config["layers"], config["heads"], config["head_dim"]
        self.max_positions = config["max_positions"]
        self._outputs = [output.name for output in decoder.get_outputs()]

    def image_keys_values(self, image_features: np.ndarray) -> ImageKeysValues:
        computed = self.image_kv.run(None, {"features": np.ascontiguousarray(image_features, dtype=np.float32)})
        return ImageKeysValues(computed[: self.layers], computed[self.layers :])

    def start(self, image: ImageKeysValues, max_length: int, padding: np.ndarray | None, image_rows: np.ndarray) -> _State:
        if max_length > self.max_positions:
            raise InvalidOptionError(f"max_length {max_length} exceeds the decoder's {self.max_positions} positions")
        rows = np.asarray(image_rows)
        empty = np.zeros((len(rows), self.heads, 0, self.head_dim), dtype=np.float32)
        pick = lambda arrays: [np.ascontiguousarray(array[rows]) for array in arrays]  # noqa: E731
        return _State(pick(image.keys), pick(image.values), [empty] * self.layers, [empty] * self.layers, padding)

    def step(self, state: _State, input_ids: np.ndarray, return_attention: bool = False):
        if return_attention:
            raise option_error("the ONNX runner does not capture cross-attention; use bliptk.load for return_attention", "return_attention")
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
        return _State(
            pick(state.cross_keys), pick(state.cross_values), pick(state.past_keys), pick(state.past_values), padding, state.length
        )


class OnnxCaptioner(CaptionBackend):
    """Captions with ONNX Runtime from an export. Make one with [`load()`][bliptk.exported.runtime.load].

    It has the verbs of torch's [`Captioner`][bliptk.model.captioner.Captioner] (``caption``, ``caption_files``,
    ``encode_video``), run by the same pipeline, without what needs torch (cross-attention,
    embeddings).

    Attributes:
        name: The model the export was made from.
        weights: Its [`Weights`][bliptk.core.provenance.Weights] (``dtype`` ``"float32"`` or ``"int8"``);
            its records say ``runtime: "onnx"`` besides, so that they are never taken for torch's.
        runtime: ``"onnx"``.
        manifest: The export's manifest.
        prompt: The exported checkpoint's own prompt (see [`Captioner`][bliptk.model.captioner.Captioner]).
        tokenizer, preprocessor: As on [`Captioner`][bliptk.model.captioner.Captioner].
        decoder: The decoding engine's view of the exported decoder.
    """

    runtime = "onnx"

    def __init__(self, folder: Path, manifest: dict, sessions: dict, dtype: str):
        self.folder, self.manifest = folder, manifest
        self.name = manifest["model"]
        recorded = manifest["weights"]
        self.weights = Weights(recorded["source"], recorded.get("seed"), recorded["fingerprint"], dtype)
        self.prompt: str | None = manifest.get("prompt")  # a fine-tuned checkpoint's own (exports before it had none)
        self.tokenizer = load_tokenizer(_inside(folder, manifest["tokenizer"], "tokenizer"))
        self._preprocessor = _preprocessor(
            _inside(folder, manifest["preprocessor"], "preprocessor config"), manifest["config"]["image_size"]
        )
        self.encoder = sessions["encoder"]
        self._decoder = _OnnxDecoder(sessions["image_kv"], sessions["decoder"], manifest["config"])

    @property
    def preprocessor(self) -> Preprocessor:
        return self._preprocessor

    @property
    def decoder(self) -> _OnnxDecoder:
        return self._decoder

    def __repr__(self) -> str:
        return f"OnnxCaptioner({self.name!r}, {self.weights.source} weights, {self.weights.dtype}, {self.folder})"

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Image features ``(B, N, D)`` of preprocessed pixels ``(B, 3, S, S)``."""
        return self.encoder.run(["features"], {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def encode_image(self, images) -> np.ndarray:
        """Image features ``(B, N, D)`` of one image or a list (paths, PIL images, arrays)."""
        return self.encode(self.preprocessor.arrays(images))


def _preprocessor(path: Path, image_size: int) -> Preprocessor:
    try:
        return Preprocessor.from_config(json.loads(path.read_bytes().decode("utf-8")), image_size)
    except (UnicodeDecodeError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a preprocessor config ({first_line(error)}); export the model again") from None


# --- loading an export ----------------------------------------------------------------------------------

# The manifest's fields and their types: what load() checks before it opens anything.
_MANIFEST_FIELDS = {
    "format": str,
    "format_version": int,
    "model": str,
    "weights": dict,
    "config": dict,
    "graphs": dict,
    "tokenizer": str,
    "preprocessor": str,
    "sha256": dict,
}
_WEIGHTS_FIELDS = {"source": str, "fingerprint": str, "dtype": str}
_CONFIG_FIELDS = ("layers", "heads", "head_dim", "image_size", "image_tokens", "max_positions")


def read_manifest(folder: Path) -> dict:
    """An export's manifest, each field checked.

    Raises:
        CheckpointError: No manifest, not JSON, a field missing or of the wrong type, or an export
            in a newer format.
    """
    manifest = _open_manifest(folder)
    _check_format(folder, manifest)
    _check_fields(
        manifest, lambda what: CheckpointError(f"{folder / 'manifest.json'}: {what}; the export is damaged: export the model again")
    )
    return manifest


def _open_manifest(folder: Path):
    """The manifest's JSON value (of any type)."""
    manifest_file = folder / "manifest.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder; give the folder bliptk export wrote")
    if not manifest_file.is_file():
        held = folder_contents(folder)
        raise CheckpointError(
            f"{folder}: not a bliptk ONNX export (no manifest.json){f'; it holds {held}' if held else ', it is empty'}; "
            f"export a model with bliptk export --model MODEL --out NEW_FOLDER"
        )
    try:
        return json.loads(manifest_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_file}: not valid JSON ({error}); export the model again") from None


def _check_format(folder: Path, manifest) -> None:
    """A bliptk export's manifest, in a format this bliptk reads."""
    from ..version import __version__

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CheckpointError(f"{folder}: manifest.json is not a bliptk ONNX export's (format {found!r})")
    if isinstance(manifest.get("format_version"), int) and manifest["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: exported by bliptk {manifest.get('bliptk_version')} in format {manifest['format_version']}, newer than this "
            f"bliptk {__version__} reads ({FORMAT_VERSION}); upgrade bliptk"
        )


def _check_fields(manifest: dict, broken) -> None:
    """Every field present, of its type; ``broken(what)`` makes the error."""
    for expected, section, where in ((_MANIFEST_FIELDS, manifest, ""), (_WEIGHTS_FIELDS, manifest.get("weights"), "weights.")):
        for name, kind in expected.items():
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
    if manifest.get("prompt") is not None and not isinstance(manifest["prompt"], str):
        raise broken(f"prompt must be a string or null, not {type(manifest['prompt']).__name__}")


def _inside(folder: Path, name: str, what: str) -> Path:
    """The plain file ``name`` names inside the export folder.

    Raises:
        CheckpointError: ``name`` is absolute, climbs out with ``..``, leads out through a link,
            or is not a plain file.
    """
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise CheckpointError(
            f"{folder}/manifest.json: {what} {name!r} is not a file name inside the export; bliptk reads only its own folder"
        )
    path = folder / relative
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise CheckpointError(f"{folder}: {what} {name} is missing; export the model again") from None
    if not resolved.is_relative_to(folder.resolve()):
        raise CheckpointError(
            f"{folder}: {what} {name} is a link that leads out of the export ({resolved}); bliptk reads only its own folder"
        )
    if not resolved.is_file():
        raise CheckpointError(f"{folder}: {what} {name} is not a plain file")
    return resolved


def load_model(options: LoadOptions) -> OnnxCaptioner:
    """The ONNX runtime's registration entry ([`bliptk.captioning.runtimes`][bliptk.captioning.runtimes]): the
    export folder ``options.model``, as [`load()`][bliptk.exported.runtime.load] loads it."""
    return load(options.model, dtype=options.dtype or "float32", threads=options.threads)


def describe_model(options: LoadOptions) -> ModelDescription:
    """The ONNX runtime's description of an export, without loading its graphs: its preprocessing
    and its prompt, from its manifest."""
    folder = Path(options.model).expanduser()
    manifest = read_manifest(folder)
    preprocessor = _preprocessor(_inside(folder, manifest["preprocessor"], "preprocessor config"), manifest["config"]["image_size"])
    return ModelDescription(preprocessor, manifest.get("prompt"))


def load(folder, *, dtype: str = "float32", threads: int | None = None, verify: bool = True, against=None) -> OnnxCaptioner:
    """Load an export for captioning with ONNX Runtime (no torch needed).

    Only plain files inside the export folder are opened, and each graph only after its sha256
    matches the manifest's.

    Args:
        folder: A folder written by [`bliptk.export()`][bliptk.model.exporting.export].
        dtype: ``"float32"`` (default; an image's caption is the same alone and in any batch) or
            ``"int8"`` (the quantized graphs of an export made with ``int8=True``: smaller and
            faster, but their activations are quantized per tensor, so that an image's caption
            can change with what else is in its batch).
        threads: ONNX Runtime's intra-op threads (None: its default, all cores).
        verify: Check each graph's sha256 against the manifest (a graph without one, or that
            changed since the export, is an error). False loads them unchecked, with an
            [`ExportChangedWarning`][bliptk.core.errors.ExportChangedWarning].
        against: A [`Captioner`][bliptk.model.captioner.Captioner] of the model the export was made from, to warn
            ([`ExportChangedWarning`][bliptk.core.errors.ExportChangedWarning]) when its weights changed since (their
            fingerprint is not the manifest's).

    Raises:
        CheckpointError: Not an export; a manifest field missing or wrong; a file outside the
            folder, missing, or whose sha256 is not the manifest's; a graph ONNX Runtime cannot
            read; a manifest from a newer bliptk; int8 asked of an export without int8 graphs.
        InvalidOptionError: An unknown ``dtype``.
        MissingDependencyError: ONNX Runtime is not installed.
    """
    if dtype not in DTYPES:
        raise option_error(f"dtype of an ONNX export must be one of {', '.join(DTYPES)}, got {dtype!r}", "dtype")
    folder = Path(os.fspath(folder)).expanduser()
    manifest = read_manifest(folder)
    if dtype == "int8" and not manifest.get("int8_graphs"):
        raise CheckpointError(f"{folder}: this export has no int8 graphs; export it with int8=True", command_line={"int8=True": "--int8"})
    files = {
        name: _inside(folder, file, "graph") for name, file in (manifest["int8_graphs"] if dtype == "int8" else manifest["graphs"]).items()
    }
    if verify:
        for path in files.values():
            expected = manifest["sha256"].get(path.name)
            if expected is None:
                raise CheckpointError(
                    f"{folder}: the manifest has no sha256 of {path.name}, so it cannot be checked; export the model again"
                )
            if sha256(path) != expected:
                raise CheckpointError(
                    f"{folder}: {path.name} is not the graph that was exported (its sha256 differs); export the model again"
                )
    else:
        warnings.warn(f"{folder}: loading its graphs without checking them (verify=False)", ExportChangedWarning, stacklevel=2)
    if against is not None and against.weights.fingerprint != manifest["weights"]["fingerprint"]:
        warnings.warn(
            f"{folder} was exported from weights with fingerprint {manifest['weights']['fingerprint']}; {against.name}'s are now "
            f"{against.weights.fingerprint}: its captions will differ from the export's; export it again",
            ExportChangedWarning,
            stacklevel=2,
        )
    sessions = _sessions(files, threads)
    _check_graphs(folder, sessions, manifest["config"])
    return OnnxCaptioner(folder, manifest, sessions, dtype)


def _check_graphs(folder: Path, sessions: dict, config: dict) -> None:
    """Each graph is the one its role needs, of the shapes the manifest's config says.

    Raises:
        CheckpointError: A graph in another's place, or a config that does not match the graphs.
    """
    layers, heads, head_dim, size = config["layers"], config["heads"], config["head_dim"], config["image_size"]
    expected = {
        "encoder": ({"pixel_values": [None, 3, size, size]}, 1),
        "image_kv": ({"features": [None, None, None]}, 2 * layers),
        "decoder": (
            {"input_ids": [None, None], "padding": [None], **{f"past_key_{i}": [None, heads, None, head_dim] for i in range(layers)}},
            1 + 2 * layers,
        ),
    }
    for name, (inputs, outputs) in expected.items():
        session = sessions[name]
        found = {item.name: item.shape for item in session.get_inputs()}
        for input_name, shape in inputs.items():
            if input_name not in found or len(found[input_name]) != len(shape):
                raise CheckpointError(
                    f"{folder}: the {name} graph has no input {input_name} of {len(shape)} dimensions, which its place and "
                    "manifest.json's config need; export the model again"
                )
            for dimension, want in zip(found[input_name], shape, strict=True):
                if want is not None and dimension != want:
                    raise CheckpointError(
                        f"{folder}: the {name} graph's {input_name} is {found[input_name]}, not what manifest.json's config says "
                        f"({shape}); export the model again"
                    )
        if len(found) != len(inputs) + (4 * layers - layers if name == "decoder" else 0) or len(session.get_outputs()) != outputs:
            raise CheckpointError(
                f"{folder}: the {name} graph has not the {layers} layers manifest.json's config says; export the model again"
            )


def _sessions(files: dict[str, Path], threads: int | None) -> dict:
    """An ONNX Runtime session per graph file."""
    ort = _onnxruntime()
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    # What ONNX Runtime raises for a graph it cannot read (none of them an OSError).
    unreadable = (state.InvalidProtobuf, state.InvalidGraph, state.Fail, state.NoSuchFile, state.InvalidArgument, state.RuntimeException)
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
        except unreadable as error:
            raise CheckpointError(f"{path}: ONNX Runtime cannot read this graph ({first_line(error)}); export the model again") from None
    return sessions
