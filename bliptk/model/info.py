"""Net information: the page's ``ArraysElementCounts``, ``ArraysTotalElementCount`` and
``LayerTypeCounts`` for a captioner or any of its parts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import nn

from ..core.errors import InvalidArgumentError

__all__ = ["NetInformation", "net_information"]


@dataclass(frozen=True)
class NetInformation:
    """What a net is made of.

    Attributes:
        arrays_element_counts: Element count of every named parameter array, in module order.
            An array shared by two modules (the decoder's tied word embeddings) appears once,
            under its first name.
        arrays_total_element_count: Total number of parameters, shared arrays counted once.
        layer_type_counts: How many layers (leaf modules) of each type, most frequent first.
    """

    arrays_element_counts: dict[str, int]
    arrays_total_element_count: int
    layer_type_counts: dict[str, int]

    def __str__(self) -> str:
        lines = [f"total parameters: {self.arrays_total_element_count:,}", "layer types:"]
        lines += [f"  {name}: {count}" for name, count in self.layer_type_counts.items()]
        lines.append(f"arrays ({len(self.arrays_element_counts)}):")
        lines += [f"  {name}: {count:,}" for name, count in self.arrays_element_counts.items()]
        return "\n".join(lines)


def _module_of(net) -> nn.Module:
    from .captioner import Captioner
    from .image_encoder import ImageEncoder
    from .text_decoder import TextDecoder

    if isinstance(net, Captioner):
        return net.model
    if isinstance(net, ImageEncoder):
        return net.vision_model
    if isinstance(net, TextDecoder):
        return net.lm
    if isinstance(net, nn.Module):
        return net
    raise InvalidArgumentError(f"net_information needs a Captioner, one of its parts, or a torch module, not {type(net).__name__}")


def net_information(net) -> NetInformation:
    """Parameter counts and layer types of a captioner, its image encoder or text decoder, or any
    torch module.

    Args:
        net: A [`Captioner`][bliptk.model.captioner.Captioner], [`ImageEncoder`][bliptk.model.image_encoder.ImageEncoder],
            [`TextDecoder`][bliptk.model.text_decoder.TextDecoder] or ``torch.nn.Module``.

    Returns:
        A [`NetInformation`][bliptk.model.info.NetInformation]. For ViT-B/16 the total is 223,971,644; for ViT-L/16 446,290,492.
    """
    module = _module_of(net)
    counts = {name: parameter.numel() for name, parameter in module.named_parameters()}
    layer_types = Counter(type(m).__name__ for m in module.modules() if next(m.children(), None) is None)
    return NetInformation(counts, sum(counts.values()), dict(layer_types.most_common()))
