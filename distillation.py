"""A shallower student of a trained multi-task model: the library side of `train.py --teacher DIR --student_layers N`.

`make_student` builds it: the teacher's architecture with N of its encoder layers, its embeddings, pooling and heads,
every weight copied from the teacher. The student is an ordinary `MultiTaskModel` (same config class, same heads; it
saves, reloads through `AutoModel`, exports to ONNX and serves like any model); its config records where it came from
(`distilled_from`, `student_layers`). The trainer then teaches it with the teacher's answers on every training row
(`trainer_multitask.distillation_loss`) plus the gold labels where a row has them.
"""

import copy

from configuration_multitask import MultiTaskConfig
from modeling_multitask import MultiTaskModel, find_encoder_blocks

# How the kept layers are picked from the teacher's L: "spread" keeps the lowest and the top layer and the rest evenly
# between (6 -> 3: layers 0, 3, 5; 6 -> 2: 0, 5), "lowest" the N lowest (the teacher's first N layers). The default
# is measured: a 3-layer student of the lowest layers is 0.8 to 1.9 points above one of the spread layers on the mean of
# the four dev columns, in every variant and seed (docs/results.md, "A shallower student").
LAYER_CHOICES = ("spread", "lowest")
DEFAULT_LAYER_CHOICE = "lowest"


def teacher_depth(model):
    """The number of encoder layers of a `MultiTaskModel` (or a `MultiTaskConfig`)."""
    config = model if isinstance(model, MultiTaskConfig) else model.config
    depth = getattr(config.backbone_config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        raise ValueError(
            f"the encoder ({type(config.backbone_config).__name__}) does not say how many layers it has "
            "(no num_hidden_layers): a student cannot be made from it"
        )
    return depth


def student_layer_indices(depth, num_layers, choice=DEFAULT_LAYER_CHOICE):
    r"""
    Which of a teacher's `depth` encoder layers a student of `num_layers` keeps, bottom up.

    Args:
        depth (`int`):
            The teacher's number of encoder layers.
        num_layers (`int`):
            The student's, 1 <= num_layers < depth.
        choice (`str` or `list[int]`, *optional*, defaults to `"lowest"`):
            `"spread"` (the lowest and the top layer, the others evenly between), `"lowest"` (the first
            `num_layers`), or the teacher layer indices themselves (0-based, increasing).

    Returns:
        `list[int]`: the kept teacher layers, increasing. A one-line `ValueError` naming the parameter otherwise.

    Example:

    ```python
    >>> from distillation import student_layer_indices
    >>> student_layer_indices(6, 3), student_layer_indices(6, 3, "spread"), student_layer_indices(6, 2, "spread")
    ([0, 1, 2], [0, 3, 5], [0, 5])
    ```
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < depth:
        raise ValueError(
            f"num_layers must be an int in [1, {depth - 1}] (the teacher has {depth} layers), got {num_layers!r}"
        )
    if isinstance(choice, str):
        if choice == "lowest":
            return list(range(num_layers))
        if choice != "spread":
            raise ValueError(f"choice {choice!r} is not one of {list(LAYER_CHOICES)} or a list of layer indices")
        if num_layers == 1:
            return [depth - 1]
        return [int(i * (depth - 1) / (num_layers - 1) + 0.5) for i in range(num_layers)]
    layers = list(choice)
    if (
        len(layers) != num_layers
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in layers)
        or layers != sorted(set(layers))
    ):
        raise ValueError(
            f"choice {layers!r}: expected {num_layers} increasing layer indices in [0, {depth - 1}] of the teacher"
        )
    return layers


def make_student(teacher, num_layers, choice=DEFAULT_LAYER_CHOICE, teacher_name=None):
    r"""
    A shallower copy of a trained multi-task model, to be taught by it (knowledge distillation).

    The student has the teacher's config (task schema, multi-label tasks and thresholds, pooling, heads, encoder
    settings) with `num_layers` encoder layers; its embeddings, the kept layers (`student_layer_indices`) and its heads
    are copies of the teacher's, so before training it is exactly the teacher with the other layers left out. Works
    for any encoder whose layers are one `nn.ModuleList` (BERT's `encoder.layer`, DistilBERT's `transformer.layer`, ...).

    Args:
        teacher ([`MultiTaskModel`]):
            The trained model; it is not changed.
        num_layers (`int`):
            The student's encoder layers, 1 <= num_layers < the teacher's.
        choice (`str` or `list[int]`, *optional*, defaults to `"lowest"`):
            Which teacher layers are kept: see `student_layer_indices`.
        teacher_name (`str`, *optional*):
            What the student's config records as `distilled_from` (a Hub id or a folder's name; never a path of this
            machine); defaults to the teacher's `name_or_path`.

    Returns:
        [`MultiTaskModel`]: the student, on the teacher's device and dtype, in training mode. Its config records
        `distilled_from` and `student_layers` (the kept teacher layers). A one-line `ValueError` names the parameter
        when the encoder's layers cannot be found or `num_layers`/`choice` do not fit the teacher.

    Example:

    ```python
    >>> # teacher: a model of 2 layers (the tiny model of the MultiTaskModel example)
    >>> from distillation import make_student
    >>> student = make_student(model, 1, teacher_name="my-teacher")
    >>> student.config.backbone_config.num_hidden_layers, student.config.student_layers, student.config.distilled_from
    (1, [0], 'my-teacher')
    ```
    """
    depth = teacher_depth(teacher)
    layers = student_layer_indices(depth, num_layers, choice)
    try:
        blocks = find_encoder_blocks(teacher.backbone)
    except ValueError as e:
        raise ValueError(f"teacher: {e}; a student cannot be made from this encoder") from None
    config = copy.deepcopy(teacher.config)
    config.backbone_config.num_hidden_layers = num_layers  # DistilBERT's n_layers through its attribute_map
    config.distilled_from = teacher_name or teacher.name_or_path or None
    config.student_layers = list(layers)
    student = MultiTaskModel(config)
    prefix = f"backbone.{blocks}."
    renumbered = {str(teacher_index): str(i) for i, teacher_index in enumerate(layers)}
    state = {}
    for name, tensor in teacher.state_dict().items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            if index not in renumbered:
                continue
            name = f"{prefix}{renumbered[index]}.{rest}"
        state[name] = tensor
    student.load_state_dict(state, strict=True)
    return student.to(device=teacher.device, dtype=teacher.dtype).train()


def check_same_schema(teacher_config, config, what="the data's"):
    """Refuse (a one-line ValueError) a teacher whose task schema (tasks, labels in order, multi-label tasks) is not
    `config`'s: the student learns the teacher's answers task by task, label by label."""
    teacher = (teacher_config.tasks, teacher_config.multi_label_tasks)
    if teacher != (config.tasks, config.multi_label_tasks):
        raise ValueError(
            f"the teacher's tasks {dict(teacher_config.tasks)} (multi-label {teacher_config.multi_label_tasks}) differ "
            f"from {what} {dict(config.tasks)} (multi-label {config.multi_label_tasks}); a student learns the "
            "teacher's tasks and labels as they are"
        )
