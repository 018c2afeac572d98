"""Train the multi-task sentence classifier with the Hugging Face Trainer.

    python train.py                                     # bundled data/ + bundled all-MiniLM-L6-v2, CPU, minutes
    python train.py --backbone distilbert-base-uncased  # the original design's encoder (needs the Hub)
    python train.py args.json                           # every argument from one JSON file
    python train.py --teacher outputs/multitask-minilm --student_layers 3 --output_dir outputs/student-3  # a student

Arguments: `training_args.py` (ModelArguments, DataArguments, MultiTaskTrainingArguments: every `TrainingArguments`
option too). The library does the work: `training_run.py` (the output folder, continuing a saved model and adding
tasks, saving, the model card) and `trainer_multitask.py` (the trainer, metrics, freezing, the sampler). This script
wires them to a command line: parse, check, read the data, build the model, train, evaluate, save; a user's mistake
ends in one line `error: ...`.
"""

import errno
import logging
import pickle
import sys

import datasets
import transformers
from transformers import DataCollatorWithPadding, set_seed

from multitask_data import UserError
from trainer_multitask import (
    MultiTaskTrainer,
    RunRecordCallback,
    freeze,
    last_complete_checkpoint,
    make_compute_metrics,
    wise_ft,
)
from training_args import ArgumentError, OutputError, parse_args
from training_run import (
    Interrupted,
    build_model,
    check_metric_for_best_model,
    check_model_options,
    check_output_dir,
    check_sequence_length,
    distillation_teacher,
    hide_progress_bars,
    how_to_go_on,
    load_tokenizer,
    model_config,
    read_splits,
    removed_if_unfinished,
    run_settings,
    save_final,
    start_output_dir,
    write_results,
)

logger = logging.getLogger(__name__)
LOGGERS = (__name__, "training_args", "training_run")  # this script's and its library's


def main(argv=None):
    model_args, data_args, training_args, argv = parse_args(sys.argv[1:] if argv is None else argv)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    log_level = training_args.get_process_log_level()
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    if training_args.verbose:
        log_level = min(log_level, logging.INFO)
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level if training_args.verbose else max(log_level, logging.WARNING))
    if training_args.disable_tqdm:  # stderr is not a terminal (a log file, a pipe), or --disable_tqdm
        hide_progress_bars()

    logger.info(
        "process %d of %d (world size %d), device %s",
        training_args.process_index,
        training_args.world_size,
        training_args.world_size,
        training_args.device,
    )
    # Check the settings, the output folder and all data before anything is built or written.
    settings = run_settings(model_args, data_args, training_args)
    check_output_dir(model_args, data_args, training_args, settings)
    config = model_config(model_args)
    check_model_options(model_args, training_args, config)
    tokenizer = load_tokenizer(model_args, config)
    check_sequence_length(model_args, config, tokenizer)
    eval_entries = data_args.eval_sets()
    selection_sets = training_args.selection_set_names(eval_entries)
    check_metric_for_best_model(training_args, config, eval_entries if data_args.eval_file else {})
    tasks = config.tasks
    train_ds, eval_splits, test_ds = read_splits(data_args, training_args, config, eval_entries)

    set_seed(training_args.seed)
    model = build_model(model_args, config)
    teacher, distill_tasks = distillation_teacher(model, model_args, training_args, config)
    frozen = freeze(
        model,
        backbone=model_args.freeze_backbone,
        embeddings=model_args.freeze_embeddings,
        layers=model_args.freeze_layers,
        heads=model_args.freeze_heads,
    )
    if frozen:
        logger.info("frozen: %d parameter tensors (%s ...)", len(frozen), ", ".join(frozen[:3]))
    # WiSE-FT interpolates towards the encoder as it is before training: the pretrained one (or a continued model's)
    initial_encoder = (
        {name: t.detach().to("cpu", copy=True) for name, t in model.encoder_state_dict().items()}
        if training_args.wise_ft_alpha < 1.0
        else None
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # what Trainer would align (with a notice) otherwise

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=model.config.max_seq_length)

    with training_args.main_process_first(desc="tokenization"):
        train_ds, test_ds = (
            ds.map(tokenize, batched=True, remove_columns=["text"]) if ds is not None else None
            for ds in (train_ds, test_ds)
        )
        eval_splits = {
            name: ds.map(tokenize, batched=True, remove_columns=["text"]) for name, ds in eval_splits.items()
        }
    # Named sets (--eval_file) are evaluated as a dict (eval_<name>_*); the validation set alone as always (eval_*).
    named_sets = list(eval_splits) if data_args.eval_file else []
    eval_ds = eval_splits if named_sets else eval_splits.get("validation")

    written = None  # what the output folder held before this run wrote into it (only the main process writes)
    with training_args.main_process_first(desc="output folder"):
        if training_args.should_save:
            written = start_output_dir(training_args, settings)

    training_args.label_names = [f"labels_{task}" for task in tasks]
    if eval_ds is None:
        logger.warning("no --validation_file: no evaluation during training; the model of the last step is kept")
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False
    with removed_if_unfinished(training_args, settings, written):
        trainer = MultiTaskTrainer(
            model=model,
            args=training_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=make_compute_metrics(list(tasks), model.config),  # reads the thresholds tuned below
            head_learning_rate=model_args.head_learning_rate,
            layerwise_lr_decay=model_args.layerwise_lr_decay,
            selection_sets=selection_sets,
            batch_by_task=data_args.batch_by_task,
            teacher=teacher,
            distill_tasks=distill_tasks,
            distill_weight=training_args.distill_weight,
            distill_temperature=training_args.distill_temperature,
        )
        resume = training_args.resume_from_checkpoint
        if resume == "last":
            resume = last_complete_checkpoint(training_args.output_dir, settings)
            logger.info("resuming from %s", resume or "scratch (no complete checkpoint of this run yet)")
        trainer.add_callback(RunRecordCallback(settings))
        try:
            train_result = trainer.train(resume_from_checkpoint=resume)
        except pickle.UnpicklingError:  # torch's weights-only loading refused a file of the checkpoint
            raise ArgumentError(
                f"--resume_from_checkpoint {resume}: the checkpoint cannot be loaded safely (a file in it holds "
                "Python objects besides tensors); resume only from checkpoints this code wrote"
            ) from None
        except KeyboardInterrupt:
            for callback in trainer.callback_handler.callbacks:  # close the progress bar now, not after our message
                if getattr(callback, "training_bar", None) is not None:
                    callback.training_bar.close()
            raise Interrupted(
                f"at step {trainer.state.global_step} of {trainer.state.max_steps}; "
                + how_to_go_on(training_args, settings, "--resume_from_checkpoint last to go on")
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OutputError(
                f"{training_args.output_dir}: {e.strerror} while writing a checkpoint; free some space and "
                + how_to_go_on(training_args, settings, "--resume_from_checkpoint last to go on")
            ) from None
        if trainer.state.global_step == 0:
            raise ArgumentError(
                "training ran 0 steps; nothing was saved (check --max_steps, --num_train_epochs, the data)"
            )
        metrics = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in train_result.metrics.items()}
        finish = "--resume_from_checkpoint last to finish it"
        try:
            if initial_encoder is not None:
                alpha = training_args.wise_ft_alpha
                wise_ft(trainer.model, initial_encoder, alpha)
                logger.info("WiSE-FT: the encoder is %g x fine-tuned + %g x initial", alpha, 1 - alpha)
            validation_ds = eval_splits.get("validation")
            if validation_ds is not None and trainer.tune_thresholds(validation_ds):  # multi-label: thresholds
                logger.info("decision thresholds tuned on the validation set: %s", model.config.label_thresholds)
            if eval_ds is not None:
                metrics.update(trainer.evaluate(eval_ds, metric_key_prefix="eval"))
            if test_ds is not None:
                metrics.update(trainer.evaluate(test_ds, metric_key_prefix="test"))
            save_final(trainer, training_args.output_dir)
        except KeyboardInterrupt:
            raise Interrupted(
                f"after training ({trainer.state.global_step} steps), before the model was saved; "
                + how_to_go_on(training_args, settings, finish)
            ) from None
        except OSError as e:
            raise OutputError(
                f"{training_args.output_dir}: {e.strerror or e} while saving the final model (the model is not "
                "saved); free some space and " + how_to_go_on(training_args, settings, finish)
            ) from None

    # The model is saved: what follows (results, model card, removing the checkpoints) never loses it.
    write_results(trainer, model_args, data_args, metrics, argv, named_sets)
    trainer.accelerator.wait_for_everyone()
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="Multi-task sentence classifier")
    return metrics


def cli():
    try:
        main()
    except UserError as e:  # a bad argument, bad data, an output folder that cannot be written: one line
        sys.exit(f"error: {e}")
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted before training started; no model was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
