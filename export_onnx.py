"""Export a saved multi-task model to ONNX, into its own directory (so the graphs travel with it):

    python export_onnx.py --model outputs/multitask-minilm   # onnx/model.onnx, onnx/model_int8.onnx, onnx/export.json
    python export_onnx.py --model outputs/multitask-minilm --quantize false   # fp32 only

Then `python predict.py --backend onnx-int8 ...` or `OnnxMultiTaskModel.from_pretrained(DIR)` (onnx_multitask.py) serve
it. Re-run after the model's weights or config change: loading refuses a graph made from other weights.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from configuration_multitask import check_model_source
from onnx_multitask import export

logger = logging.getLogger(__name__)


@dataclass
class ExportArguments:
    model: str = field(metadata={"help": "Directory of a model saved by train.py; the graphs go to its onnx/ folder."})
    opset: int | None = field(default=None, metadata={"help": "ONNX opset; default: the exporter's."})
    quantize: bool = field(default=True, metadata={"help": "Also write the int8 graph (onnx/model_int8.onnx)."})

    def __post_init__(self):
        if self.opset is not None and self.opset < 1:
            raise ValueError(f"--opset must be >= 1, got {self.opset}")


def main(argv=None):
    parser = HfArgumentParser(ExportArguments)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    # The exporter and the quantiser log every graph rewrite at INFO (on the root logger); show only ours.
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.WARNING)
    for name in (__name__, "onnx_multitask"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision is not
    # installed": the exporter lists the vision operators it could not register; none is in a text model
    try:
        check_model_source(args.model)  # a file, a mistyped path: said at once, as every script says it
        paths = export(args.model, opset=args.opset, quantize=args.quantize)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in paths:
        logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
