"""What the benchmarks share: running `train.py` the way a user does (a command, not an import of the script)."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_train(options):
    """Run `python train.py ARGS.json` with `options` (train.py's arguments as a dict, `output_dir` among them, as
    in an arguments file) and return the run's metrics (OUTPUT_DIR/all_results.json)."""
    with tempfile.TemporaryDirectory() as tmp:
        args_file = Path(tmp) / "args.json"
        args_file.write_text(json.dumps(options), encoding="utf-8")
        command = [sys.executable, str(REPO / "train.py"), str(args_file)]
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"train.py {json.dumps(options)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    return json.loads((Path(options["output_dir"]) / "all_results.json").read_text(encoding="utf-8"))
