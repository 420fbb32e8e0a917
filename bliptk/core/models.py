"""The BLIP captioning model family: a registry of architecture names.

Like the page's ``NetModel[..., "ParametersInformation"]``, the registry names each member of
the family and says what it is before any weights are loaded. The real Hugging Face configs of
both checkpoints ship with bliptk (``bliptk/assets``), so an architecture can be built, inspected
and counted with no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from .errors import UnknownModelError

__all__ = ["ModelSpec", "ModelTable", "available_models", "get_model_spec", "DEFAULT_MODEL"]

DEFAULT_MODEL = "ViT-L/16"
"""The architecture [`load()`][bliptk.model.loading.load] and the command load by default (the page's)."""


@dataclass(frozen=True)
class ModelSpec:
    """One member of the family.

    Attributes:
        name: Architecture name, as on the page (``"ViT-B/16"``).
        hub_id: Hugging Face hub id of the MS-COCO captioning checkpoint, or None for an
            architecture that exists only with random weights (``"tiny"``).
        config_asset: File name of the shipped ``config.json`` in ``bliptk/assets``.
        parameters: Number of parameters, shared (tied) arrays counted once.
        description: One line for tables.
    """

    name: str
    hub_id: str | None
    config_asset: str
    parameters: int
    description: str

    def config_dict(self) -> dict:
        """The architecture's ``config.json`` (the shipped file), as a dict; the torch runtime
        builds ``transformers.BlipConfig`` from it ([`blip_config()`][bliptk.model.loading.blip_config])."""
        return _config_dict(self.config_asset)

    @property
    def image_size(self) -> int:
        """Side of the square input image in pixels."""
        return _config_dict(self.config_asset)["vision_config"]["image_size"]

    @property
    def patch_size(self) -> int:
        """Side of the ViT's square patches in pixels (16)."""
        return _config_dict(self.config_asset)["vision_config"]["patch_size"]

    @property
    def feature_shape(self) -> tuple[int, int]:
        """Shape of the image encoder's output for one image: ``(1 + grid**2, D)``, the grid
        being ``image_size // patch_size`` patches a side."""
        grid = self.image_size // self.patch_size
        return (grid * grid + 1, _config_dict(self.config_asset)["vision_config"]["hidden_size"])


@cache
def _config_dict(asset: str) -> dict:
    return json.loads(resources.files("bliptk.assets").joinpath(asset).read_text())


_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "ViT-B/16",
            "Salesforce/blip-image-captioning-base",
            "ViT-B-16.json",
            223_971_644,
            "BLIP base: ViT-B/16 image encoder, BERT-base text decoder",
        ),
        ModelSpec(
            "ViT-L/16",
            "Salesforce/blip-image-captioning-large",
            "ViT-L-16.json",
            446_290_492,
            "BLIP large: ViT-L/16 image encoder, BERT-base text decoder (the page's default)",
        ),
        ModelSpec(
            "tiny",
            None,
            "tiny.json",
            1_129_324,
            "a 2-layer random BLIP with the real vocabulary, for tests and CI (no weights)",
        ),
    )
}

# The family proper: what the page lists. "tiny" exists for tests and CI only.
_FAMILY = ("ViT-B/16", "ViT-L/16")


class ModelTable(list):
    """A list of [`ModelSpec`][bliptk.core.models.ModelSpec] that prints as a table (and renders as one in Jupyter)."""

    _columns = ("name", "hub_id", "image_size", "feature_shape", "parameters")

    def _rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = [self._columns]
        for spec in self:
            rows.append(
                (
                    spec.name,
                    spec.hub_id or "(test net: random weights only)",
                    str(spec.image_size),
                    str(spec.feature_shape),
                    f"{spec.parameters:,}",
                )
            )
        return rows

    def __str__(self) -> str:
        rows = self._rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(self._columns))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = self._rows()
        head = "".join(f"<th>{c}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def available_models(include_test: bool = False) -> ModelTable:
    """The architectures of the family, one row each.

    Args:
        include_test: Also list ``"tiny"``, the random test architecture.

    Returns:
        A [`ModelTable`][bliptk.core.models.ModelTable] (a list of [`ModelSpec`][bliptk.core.models.ModelSpec]) that prints as a table.
    """
    names = list(_FAMILY) + (["tiny"] if include_test else [])
    return ModelTable(_REGISTRY[name] for name in names)


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry of an architecture name, or of the hub id of a family member.

    Raises:
        UnknownModelError: ``name`` is neither; the message lists the valid names.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    for spec in _REGISTRY.values():
        if spec.hub_id is not None and spec.hub_id.lower() == name.lower():
            return spec
    raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}")


def find_model_spec(name: str) -> ModelSpec | None:
    """Like [`get_model_spec()`][bliptk.core.models.get_model_spec], but None for a name outside the registry."""
    try:
        return get_model_spec(name)
    except UnknownModelError:
        return None
