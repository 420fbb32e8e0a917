"""``bliptk info``: net information (the page's ``NetInformation``), no weights needed."""

from __future__ import annotations

from ..core.models import DEFAULT_MODEL
from .arguments import EXIT_OK, torch_module

HELP = "net information: parameters and layer types (no weights needed)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"ViT-B/16, ViT-L/16, tiny, a hub id or a checkpoint folder (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--arrays", action="store_true", help="also list every array's element count")


def run(args) -> int:
    # Net information needs the architecture only: no weights, no download, no memory.
    information = torch_module("model.info").net_information(torch_module("model.loading").architecture(args.model))
    print(f"model: {args.model}")
    print(f"total parameters: {information.arrays_total_element_count:,}")
    print("layer types:")
    for name, count in information.layer_type_counts.items():
        print(f"  {name}: {count}")
    if args.arrays:
        print("arrays:")
        for name, count in information.arrays_element_counts.items():
            print(f"  {name}: {count:,}")
    return EXIT_OK
