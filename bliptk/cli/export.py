"""``bliptk export``: a model to a folder of ONNX graphs, which ``bliptk caption --model FOLDER``
captions from with ONNX Runtime, no torch needed."""

from __future__ import annotations

import json

from .arguments import EXIT_OK, load_model, model_arguments, one_line, torch_module

HELP = "export a model to ONNX, to caption with ONNX Runtime (no torch needed)"


def add_arguments(parser) -> None:
    model_arguments(parser, dtype=False)
    parser.add_argument("--out", required=True, help="folder to write the graphs, tokenizer, preprocessing config and manifest to")
    parser.add_argument(
        "--int8", action="store_true", help="also write int8 graphs (quantized); bliptk caption --model FOLDER runs them with --dtype int8"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")


def run(args) -> int:
    exporter = torch_module("model.exporting")
    with exporter.claim_export_folder(args.out, args.overwrite, args.model) as out:  # before the model loads
        captioner = load_model(args)
        folder = exporter.export(captioner, out, int8=args.int8)
    check = json.loads((folder / "manifest.json").read_text())["check"]
    print(
        f"exported {captioner.name} to {one_line(str(folder))}: features within {check['features_max_abs_diff']:.1e} and logits within "
        f"{check['logits_max_abs_diff']:.1e} of torch (tolerance {check['tolerance']['logits']:g})"
    )
    return EXIT_OK
