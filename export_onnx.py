"""Export a saved multi-task model to ONNX, into its own directory (so the graphs travel with it):

    python export_onnx.py --model outputs/multitask-minilm   # onnx/model.onnx, onnx/model_int8.onnx, onnx/export.json
    python export_onnx.py --model outputs/multitask-minilm --no_quantize   # fp32 only

Then `python predict.py --backend onnx-int8 ...` or `OnnxMultiTaskModel.from_pretrained(DIR)` serve it; the export
also puts that class's code in onnx/ (onnx_multitask.py and what it imports), so the folder alone serves it. Re-run
after the model's weights or config change: loading refuses a graph made from other weights, or one altered since.
Ctrl-C (exit status 130) or a failure leaves the previous export as it was: the new one is moved in only when complete.
"""

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from configuration_multitask import check_model_source
from multitask_data import UserError
from onnx_multitask import DEFAULT_OPSET, MANIFEST, ONNX_DIR, export

logger = logging.getLogger(__name__)


@dataclass
class ExportArguments:
    model: str = field(metadata={"help": "Directory of a model saved by train.py; the graphs go to its onnx/ folder."})
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": "ONNX opset; 20 for onnxruntime older than 1.23."})
    quantize: bool = field(
        default=True, metadata={"help": "Also write the int8 graph (onnx/model_int8.onnx); --no_quantize: fp32 only."}
    )

    def __post_init__(self):
        if self.opset < 1:
            raise UserError(f"--opset must be >= 1, got {self.opset}")


def make_parser():
    parser = HfArgumentParser(ExportArguments)
    # HfArgumentParser gives the --no_quantize it adds the help (and a default) of --quantize: say what it does.
    for action in parser._actions:
        if "--no_quantize" in action.option_strings:
            action.help = "Write only the fp32 graph (and remove an int8 graph of an earlier export)."
            action.default = argparse.SUPPRESS  # the value when absent is --quantize's default (True)
    return parser


def export_state(model_dir):
    """Which export.json is there (inode, modification time), or None: compared before and after an interrupt to say
    what is on disk (a new export moves a new file in, even when its bytes are those of the old)."""
    try:
        stat = (Path(model_dir) / ONNX_DIR / MANIFEST).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def main(argv=None):
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            try:
                (args,) = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
            except (OSError, ValueError, TypeError) as e:  # a file missing, malformed, naming no or a wrong argument
                raise UserError(f"{argv[0]}: {' '.join(str(e).split())}") from None
        else:
            (args,) = parser.parse_args_into_dataclasses(args=argv)
    except UserError as e:  # a value __post_init__ refuses (--opset 0), an arguments file that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 2
    # The exporter and the quantiser log every graph rewrite at INFO (on the root logger); show only ours.
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.WARNING)
    for name in (__name__, "onnx_multitask"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision is not
    # installed": the exporter lists the vision operators it could not register; none is in a text model
    before = export_state(args.model)
    try:
        check_model_source(args.model)  # a file, a mistyped path: said at once, as every script says it
        paths = export(args.model, opset=args.opset, quantize=args.quantize)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        after, folder = export_state(args.model), Path(args.model) / ONNX_DIR
        if after is not None and after != before:
            print(f"interrupted after the export to {folder} was complete", file=sys.stderr)
        elif after is not None:
            print(f"interrupted: nothing written; {folder} holds the previous export", file=sys.stderr)
        else:
            print("interrupted: nothing written; run the same command to export", file=sys.stderr)
        return 130
    for path in paths:
        size = path.stat().st_size
        logger.info("wrote %s (%s)", path, f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
