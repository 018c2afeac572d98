"""Label a file of any size with a saved multi-task model: streaming, in input order, restartable.

    python predict.py --model outputs/model --input data/test.jsonl --output predictions.jsonl
    head -n 5 data/test.jsonl | python predict.py --model outputs/model --input - --format jsonl --output first5.jsonl

Input: plain text (one text per line), JSONL (one object per line with a `--text_field`; blank lines are skipped) or
CSV/TSV with a `--text_field` column; the format comes from the extension (stdin, or a pipe such as /dev/stdin, is
plain text unless `--format` says otherwise). The input is read lazily, `--window` texts at a time; each
window runs in length-sorted batches and is written in input order, then flushed, so memory does not grow with the
input.

Output: one JSON object per input text, `{"line": N, "id": ..., "<task>": {"label": ..., "score": ...}, ...}`, where
`line` is the 1-based line of the input where the text starts, `id` is copied from the input's `--id_field` when it has
one, and `"embedding": [...]` is added with `--with_embeddings`. An output that is not a regular file (/dev/stdout, a
pipe) is written as it goes, with no record beside it and nothing to resume. An input without a text to label writes
no output and says so.

Restart: run the same command again. `OUTPUT.resume.json` records what the output belongs to (the input's path and
content hash, the model's path and weights hash, the settings that change a prediction); if it matches, a partial
last line (left by a kill) is cut off and the run resumes after the input line named by the last complete output
line, so nothing is written twice or lost. Otherwise the run is refused, naming what differs. The input may not be
the output itself, and a lock (`OUTPUT.lock`, while the run lasts) stops a second writer. Stdin (read once) is checked
by the hash of its first lines: a resume from another stdin is refused before anything is written. Ctrl-C, or a write that fails (a full disk), leaves the output cut back to its last
whole line, and the one-line message says up to which input line it is complete (Ctrl-C: exit status 130); the same
command resumes.

Bad lines (undecodable bytes, malformed JSON, a missing or non-string text field, a text with nothing to read: empty,
or only spaces and invisible characters, see `modeling_multitask.is_blank`): `--on_error fail` (the default)
stops with `error: FILE:LINE: ...` and a non-zero exit, after writing the texts before that line, so a run re-started
once the line is fixed continues from it; `--on_error skip` logs a warning naming the line and writes nothing for it.

A corpus (a folder or glob of files, local or in object storage) on many processes or machines: `--engine ray`
labels it on Ray Data into a folder of shards, restartable the same way (see `ray_labelling`):

    python predict.py --engine ray --model outputs/model --input corpus/ --output labels/ --num_workers 2

One launch of several processes (torchrun, accelerate launch) is refused: `--engine ray` is the way to share an
input.

The work is done by `labelling.label_file` (and `ray_labelling.label_corpus`), which the demo (app.py) calls too; this
script reads the command line and turns every mistake into one line `error: ...`.
"""

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import transformers
from transformers import HfArgumentParser

import labelling
from labelling import Interrupted, LabelArguments, label_file
from multitask_data import UserError
from ray_labelling import RayArguments, label_corpus

FLAGS = tuple(f.name for f in dataclasses.fields(RayArguments))  # a library error naming one is said as its flag
RAY_ONLY = tuple(sorted(set(FLAGS) - {f.name for f in dataclasses.fields(LabelArguments)}))  # --engine ray's


@dataclass
class PredictArguments(RayArguments):
    """predict.py's flags: the fields of `labelling.LabelArguments` (model, input, output and the options) and of
    `ray_labelling.RayArguments` (the Ray engine's), each checked there once, and the engine."""

    engine: Literal["local", "ray"] = field(
        default="local",
        metadata={"help": "local: this process, into one file; ray: Ray Data replicas, into a folder of shards."},
    )


def parse(argv):
    """The PredictArguments of a command line, or of its one argument ARGS.json; a UserError of one line."""
    parser = HfArgumentParser(PredictArguments)
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            (args,) = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        else:
            (args,) = parser.parse_args_into_dataclasses(args=argv)
    except UserError as e:  # an option out of range: the library names the parameter, the message names the flag
        raise UserError(labelling.as_flag(e, FLAGS)) from None
    except (OSError, ValueError) as e:  # an arguments file that is missing, malformed or names no argument
        raise UserError(f"{argv[0]}: {' '.join(str(e).split())}") from None
    if args.engine == "local":
        defaults = RayArguments(model="", input="", output="")
        for name in RAY_ONLY:
            if getattr(args, name) != getattr(defaults, name):
                raise UserError(f"--{name} is an option of --engine ray")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    if not sys.stderr.isatty():  # progress bars in a log file are escape codes and carriage returns
        transformers.utils.logging.disable_progress_bar()
    try:
        if args.engine == "ray":
            label_corpus(args)
        else:
            label_file(args)
    except UserError as e:
        print(f"error: {labelling.as_flag(e, FLAGS)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # --engine ray: the shards written are whole
        print(f"interrupted: {args.output} holds the shards written; run the same command to resume", file=sys.stderr)
        return 130
    except Interrupted as stop:
        if not stop.resumable:
            print(f"interrupted: {args.output} got predictions up to input line {stop.line}", file=sys.stderr)
        elif stop.line:
            print(
                f"interrupted: {args.output} holds predictions up to input line {stop.line}; "
                "run the same command to resume",
                file=sys.stderr,
            )
        else:
            print("interrupted before any prediction was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
