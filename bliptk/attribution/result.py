"""What an explanation is, one map per caption token and how it was made, and its file: importable
without torch, so that a saved explanation is read back anywhere;
[`explain()`][bliptk.attribution.explanation.explain] makes it.

[`Explanation.save()`][bliptk.attribution.explanation.Explanation.save] writes, and
[`load_explanation()`][bliptk.attribution.result.load_explanation] reads, either format, chosen by
the file's extension:

- ``.npz`` (NumPy's zip of arrays, read without pickle): arrays ``maps`` ``(T, grid, grid)``,
  ``token_ids`` ``(T,)`` int64, one ``extra.<name>`` per extra output (``extra.text_relevance``,
  ``extra.completeness_gap``), and ``metadata``, a string of JSON;
- ``.safetensors``: the same tensors, the JSON in the header's metadata under ``"bliptk"``.

The JSON holds the rest: ``format`` (``"bliptk-explanation"``), ``version`` (1), ``tokens``,
``method``, ``layer``, ``prompt``, ``text``, ``provenance`` (model, weights, the method's options,
the image's fingerprint), ``contrast`` (token index -> foil), ``image`` (its path) and ``dtype``.
Maps and extras are stored in float32 (read back exactly) or float16 (half the size, read back as
float32 of the float16 values).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError, option_error
from ..store.outputs import claim
from .registry import METHOD_NAMES

__all__ = ["MAP_DTYPES", "MAP_FORMATS", "Explanation", "MapFileOptions", "load_explanation", "save_explanation", "write_explanation"]


@dataclass(eq=False)
class Explanation:
    """What [`explain()`][bliptk.attribution.explanation.explain] returns: one map per caption token.

    Attributes:
        maps: ``(T, grid, grid)`` float32, one map per caption token (grid = 24 at 384 px with
            16 px patches). Higher means more (each method's own units; the figures rescale each
            map to its range).
        tokens: The caption's WordPiece tokens, T of them (the ending ``[SEP]`` not included).
        token_ids: Their ids.
        method: The method that made the maps (one of
            [`EXPLANATION_METHODS`][bliptk.attribution.registry.EXPLANATION_METHODS]).
        layer: The decoder layer of ``"attention"`` and ``"gradcam"`` (0-based), else None.
        prompt: The prompt the caption follows.
        text: The caption, prompt included.
        extras: A method's other outputs, named arrays: ``"text_relevance"`` (relevance),
            ``"completeness_gap"`` (integrated gradients); see their properties.
        provenance: The model and weights, and the options the maps were made with.
        contrast: Contrastive targets: token index -> the foil token its map is contrasted with
            (its target ``log p(token) - log p(foil)``); empty for none.
        image: The image's (or video's) path, when it was explained from a file; else None.
    """

    maps: np.ndarray
    tokens: list[str]
    token_ids: list[int]
    method: str
    layer: int | None
    prompt: str
    text: str
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    contrast: dict[int, str] = field(default_factory=dict)
    image: str | None = None

    @property
    def text_relevance(self) -> np.ndarray | None:
        """For ``"relevance"``, ``(T, P + T)``: each token's relevance over the decoder's input
        positions (``[DEC]`` and the prompt's P - 1 tokens, then the caption's tokens), row t being
        row p of R^qq, identity term included; later positions get 0. Else None."""
        return self.extras.get("text_relevance")

    @property
    def completeness_gap(self) -> np.ndarray | None:
        """For ``"integrated_gradients"``, ``(T,)``: the sum of each token's attributions minus
        ``y(image) - y(baseline)``, as captum reports it. Else None."""
        return self.extras.get("completeness_gap")

    @property
    def name(self) -> str:
        """The method's name in figures (``"Grad-CAM"``, ...)."""
        return METHOD_NAMES.get(self.method, self.method)

    def save(self, path: str | os.PathLike, *, dtype: str = "float32", overwrite: bool = False):
        """Write the explanation to one file, read back by
        [`load_explanation()`][bliptk.attribution.result.load_explanation]: an ``.npz`` (NumPy,
        read without pickle) or a ``.safetensors`` file, by its extension. See
        [`bliptk.attribution.result`][bliptk.attribution.result] for what it holds.

        Args:
            path: The file, ``.npz`` or ``.safetensors``.
            dtype: The maps' and extras' precision on disk, ``"float32"`` (read back exactly) or
                ``"float16"`` (half the size; read back as float32 of the float16 values).
            overwrite: Replace an existing file.

        Returns:
            The path written.

        Raises:
            InvalidOptionError: Another extension or dtype.
            OutputExistsError, OutputError, OutputLockedError: The file exists (without
                ``overwrite``), cannot be written, or another process writes it.
        """
        return save_explanation(self, path, dtype=dtype, overwrite=overwrite)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        layer = "" if self.layer is None else f", layer {self.layer}"
        contrast = "".join(f", {self.tokens[t]!r} not {foil!r}" for t, foil in self.contrast.items())
        return f"Explanation({self.method}{layer}{contrast}, {len(self.tokens)} tokens of {self.text!r})"


MAP_DTYPES = ("float32", "float16")
"""The precisions an explanation's maps are saved in."""
MAP_FORMATS = {".npz": "npz", ".safetensors": "safetensors"}
"""The file formats of saved explanations, by extension."""
_FORMAT, _VERSION = "bliptk-explanation", 1


@dataclass(frozen=True, kw_only=True)
class MapFileOptions:
    """How an explanation job saves its maps.

    Attributes:
        map_dtype: ``"float32"`` (read back exactly) or ``"float16"`` (half the disk).
        map_format: ``"npz"`` or ``"safetensors"``.
    """

    map_dtype: str = field(default="float32", metadata={"help": "precision of the saved maps", "choices": lambda: MAP_DTYPES})
    map_format: str = field(
        default="npz", metadata={"help": "file format of the saved maps", "choices": lambda: tuple(MAP_FORMATS.values())}
    )

    def __post_init__(self):
        if self.map_dtype not in MAP_DTYPES:
            raise option_error(f"map_dtype must be one of {', '.join(MAP_DTYPES)}, got {self.map_dtype!r}", "map_dtype")
        if self.map_format not in MAP_FORMATS.values():
            raise option_error(f"map_format must be one of {', '.join(MAP_FORMATS.values())}, got {self.map_format!r}", "map_format")


def _format_of(path: Path) -> str:
    if path.suffix.lower() not in MAP_FORMATS:
        raise option_error(
            f"{path}: an explanation is saved as .npz or .safetensors, not {path.suffix or 'a file without extension'!r}", "path"
        )
    return MAP_FORMATS[path.suffix.lower()]


def _check_dtype(dtype) -> None:
    if dtype not in MAP_DTYPES:
        raise option_error(f"dtype must be one of {', '.join(MAP_DTYPES)}, got {dtype!r}", "dtype")


def save_explanation(explanation, path: str | os.PathLike, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """See [`Explanation.save()`][bliptk.attribution.explanation.Explanation.save]."""
    _format_of(Path(path))
    _check_dtype(dtype)
    with claim(path, replace=overwrite, fix="pass overwrite=True to replace it") as output:
        return output.write(lambda temporary: write_explanation(explanation, temporary, dtype, _format_of(Path(path))))


def write_explanation(explanation, path: Path, dtype: str = "float32", format: str | None = None) -> None:
    """Write an explanation to ``path`` as it is (the caller holds the output: see
    [`bliptk.store.outputs`][bliptk.store.outputs]); ``format`` by the extension when None."""
    format = format or _format_of(path)
    arrays = {
        "maps": np.ascontiguousarray(explanation.maps, dtype=dtype),
        "token_ids": np.asarray(explanation.token_ids, dtype=np.int64),
        **{f"extra.{name}": np.ascontiguousarray(values, dtype=dtype) for name, values in explanation.extras.items()},
    }
    metadata = json.dumps(
        {
            "format": _FORMAT,
            "version": _VERSION,
            "tokens": explanation.tokens,
            "method": explanation.method,
            "layer": explanation.layer,
            "prompt": explanation.prompt,
            "text": explanation.text,
            "provenance": explanation.provenance,
            "contrast": {str(t): foil for t, foil in explanation.contrast.items()},
            "image": explanation.image,
            "dtype": dtype,
        },
        ensure_ascii=False,
    )
    if format == "npz":
        savez: Any = np.savez  # (its typing reads the arrays' names as its own keywords)
        with open(path, "wb") as file:
            savez(file, metadata=np.array(metadata), **arrays)
    else:
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={"bliptk": metadata})


def load_explanation(path: str | os.PathLike):
    """An explanation saved by [`Explanation.save()`][bliptk.attribution.explanation.Explanation.save]
    (or by ``explain_files``), as it was: maps and extras in float32.

    Raises:
        InvalidOptionError: Another extension than ``.npz`` or ``.safetensors``.
        InputError: The file is missing, or is no explanation saved by bliptk (the message says
            what is wrong).
    """
    path = Path(path)
    format = _format_of(path)
    if not path.is_file():
        raise InputError(path, "no such explanation file")
    try:
        arrays, metadata = _read_npz(path) if format == "npz" else _read_safetensors(path)
        meta = json.loads(metadata)
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError("its metadata is not an explanation's")
        if meta.get("version") != _VERSION:
            raise ValueError(f"version {meta.get('version')!r} (this bliptk reads {_VERSION}): load it with the bliptk that wrote it")
        return Explanation(
            maps=arrays["maps"].astype(np.float32),
            tokens=list(meta["tokens"]),
            token_ids=arrays["token_ids"].astype(np.int64).tolist(),
            method=meta["method"],
            layer=meta["layer"],
            prompt=meta["prompt"],
            text=meta["text"],
            extras={name.removeprefix("extra."): values.astype(np.float32) for name, values in arrays.items() if name.startswith("extra.")},
            provenance=meta["provenance"],
            contrast={int(t): foil for t, foil in meta["contrast"].items()},
            image=meta["image"],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as problem:
        raise InputError(path, f"not an explanation saved by bliptk ({problem}); save one with Explanation.save") from None


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], str]:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    metadata = arrays.pop("metadata", None)
    if metadata is None or metadata.dtype.kind != "U" or metadata.shape != ():
        raise ValueError("it has no metadata")
    return arrays, str(metadata)


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = (file.metadata() or {}).get("bliptk")
            arrays = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open has no iteration)
    except Exception as problem:  # safetensors' own error types differ between versions
        raise ValueError(str(problem).splitlines()[0] if str(problem) else type(problem).__name__) from None
    if metadata is None:
        raise ValueError("it has no bliptk metadata")
    return arrays, metadata
