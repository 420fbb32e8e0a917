"""``bliptk finetune``: fine-tune a captioner on your images and captions, in full or with LoRA
(``torchrun`` for several processes). Its training flags are the fields of
[`FinetuneOptions`][bliptk.training.options.FinetuneOptions] and of
[`LoraOptions`][bliptk.training.options.LoraOptions] that have one."""

from __future__ import annotations

from ..core.errors import InvalidOptionError
from ..training.options import FinetuneOptions, LoraOptions
from .arguments import EXIT_OK, model_arguments, one_line, option_arguments, options_from, torch_module

HELP = "fine-tune a captioner on your images and captions (full or LoRA)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--train", required=True, help='training pairs: a .jsonl of {"image", "caption"} lines, or COCO caption annotations'
    )
    parser.add_argument("--val", default=None, help="validation pairs, the same formats: the loss (and COCO metrics) at each checkpoint")
    parser.add_argument(
        "--images", default=None, help="the folder the data files' relative image paths are relative to (default: each file's own)"
    )
    parser.add_argument("--out", required=True, help="the output folder: a checkpoint that --model and bliptk.load take")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest complete checkpoint")
    model_arguments(parser, dtype=False)
    option_arguments(parser, FinetuneOptions)
    option_arguments(parser, LoraOptions, unset=("r",))


def run(args) -> int:
    finetuning = torch_module("training.finetune")
    lora = None
    if args.r is not None:
        lora = {"r": args.r, "alpha": 2 * args.r, "vision": args.vision, "save_adapter": args.save_adapter}
    elif args.vision or args.save_adapter:
        raise InvalidOptionError("--lora-vision and --save-adapter go with --lora RANK")
    options = options_from(args, FinetuneOptions, lora=None).as_dict() | {"lora": lora}
    result = finetuning.finetune(
        args.model,
        args.train,
        out=args.out,
        val=args.val,
        images=args.images,
        resume=args.resume,
        load_options={"pretrained": not args.random_weights, "device": args.device},
        **options,
    )
    losses = [entry["loss"] for entry in result.history if "loss" in entry]
    if not finetuning.is_main_process():
        return EXIT_OK
    if result.finished_before:
        print(f"the run in {one_line(str(result.out))} had finished: nothing to train; its model is there")
        return EXIT_OK
    last = f", last loss {losses[-1]:.4f}" if losses else ""
    print(
        f"fine-tuned {result.steps} steps{last}; {result.trainable_parameters:,} of {result.total_parameters:,} parameters trained; "
        f"wrote {one_line(str(result.out))}"
    )
    return EXIT_OK
