"""The `Example:` blocks of the public API's docstrings run, so an example that stops working fails here.

Each docstring's ```python fence lines are dropped before parsing (transformers' docstrings close a block right after
the expected output, which plain doctest would read as part of it). Lines that need a trained model folder are marked
`# doctest: +SKIP`; the rest run on tiny random configs.

The tiny model and tokenizer are built once, in the `MultiTaskModel` example, which runs on its own; every other
example starts from `model` and `tokenizer` as that example builds them (`example_globals`), fresh for each example."""

import doctest
import importlib
import re

import pytest

MODULES = (
    "configuration_multitask",
    "modeling_multitask",
    "onnx_multitask",
    "trainer_multitask",
    "pipeline_multitask",
    "labelling",
    "distillation",
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
FENCE = re.compile(r"^[ \t]*```[a-z]*[ \t]*$", re.MULTILINE)
# Public objects whose docstring must hold an Example (the list); a docstring that loses it fails here.
DOCUMENTED = {
    "configuration_multitask": ["MultiTaskConfig", "MultiTaskConfig.add_task", "MultiTaskConfig.from_saved_model"],
    "modeling_multitask": [
        "MultiTaskModel",
        "MultiTaskModel.from_backbone",
        "MultiTaskModel.forward",
        "MultiTaskModel.add_task",
        "MultiTaskInference.predict",
        "MultiTaskInference.encode",
        "MultiTaskInference.iter_batches",
        "MultiTaskInference.decode",
        "load_saved_model",
        "load_saved_tokenizer",
    ],
    "onnx_multitask": ["OnnxMultiTaskModel", "OnnxMultiTaskModel.from_pretrained", "export"],
    "trainer_multitask": ["MultiTaskTrainer"],
    "pipeline_multitask": ["MultiTaskClassificationPipeline"],
    "labelling": ["load_for_inference", "label_texts", "label_file"],
    "distillation": ["make_student", "student_layer_indices"],
}


class FencedParser(doctest.DocTestParser):
    """doctest's parser, blind to Markdown code fences."""

    def parse(self, string, name="<string>"):
        return super().parse(FENCE.sub("", string), name)


def docstring_tests(module_name):
    module = importlib.import_module(module_name)
    return [test for test in doctest.DocTestFinder(parser=FencedParser()).find(module) if test.examples]


def runnable(test):
    return any(not example.options.get(doctest.SKIP) for example in test.examples)


CASES = [test for name in MODULES for test in docstring_tests(name)]


SETUP = "modeling_multitask.MultiTaskModel"  # the example that builds the tiny model and tokenizer for the others


def fresh(test, globs):
    """`test` with its own globals `globs` (a DocTest's globals are shared by every run of it)."""
    return doctest.DocTest(test.examples, globs, test.name, test.filename, test.lineno, test.docstring)


def run(test):
    """Run `test`; its globals afterwards, or a failure naming what differed."""
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    runner.run(test, out=report.append, clear_globs=False)
    assert runner.failures == 0, "".join(report)
    return test.globs


def example_globals():
    """`model` and `tokenizer` as the MultiTaskModel example builds them: that example run afresh, so each example
    gets its own model (one that adds a task cannot change another's)."""
    (setup,) = [test for test in CASES if test.name == SETUP]
    namespace = run(fresh(setup, dict(setup.globs)))
    return {"model": namespace["model"], "tokenizer": namespace["tokenizer"]}


@pytest.mark.parametrize("test", [t for t in CASES if runnable(t)], ids=lambda test: test.name)
def test_example_runs(test):
    globs = dict(test.globs) if test.name == SETUP else {**test.globs, **example_globals()}
    run(fresh(test, globs))


def test_setup_example_builds_model_and_tokenizer():
    """The MultiTaskModel example, run on its own, holds what the other examples start from."""
    namespace = example_globals()
    assert namespace["model"].config.tasks["sentiment"] == ["Negative", "Positive"]
    assert namespace["model"] is not example_globals()["model"]


@pytest.mark.parametrize("module_name", MODULES)
def test_public_api_has_examples(module_name):
    found = {test.name.removeprefix(f"{module_name}.") for test in CASES if test.name.startswith(f"{module_name}.")}
    missing = [name for name in DOCUMENTED[module_name] if name not in found]
    assert not missing, f"no Example in the docstring of {missing}"


def test_examples_run_on_tiny_models():
    """Most of the API's examples run (not skipped): the ones needing a trained folder are the exception."""
    assert sum(runnable(test) for test in CASES) >= 12


def test_fenced_block_closing_line_is_not_expected_output():
    """The fence after an expected output is not compared: without the parser's help it would be."""
    docstring = "```python\n>>> 1 + 1\n2\n```\n"
    test = FencedParser().get_doctest(docstring, {}, "fence", None, 0)
    assert test.examples[0].want == "2\n"
    plain = doctest.DocTestParser().get_doctest(docstring, {}, "fence", None, 0)
    assert plain.examples[0].want == "2\n```\n"
