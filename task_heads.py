"""The Hive-MTL task heads of a checkpoint, rebuilt as one model on embeddings, so heads are scored
on the same cached embeddings the verification and probes use."""

from __future__ import annotations

import os


def task_heads(checkpoint_file: str | os.PathLike):
    """The Hive-MTL heads as a model on 512-d embeddings (outputs keyed by head name), or None for a checkpoint without heads.

    The speaker head reads `speaker_task` (softmax head) or the embedding itself (AAM head);
    every label head (`<task>_pred`) reads `shared`, an adversarial one its own `<task>_pred_hidden`
    (its gradient reversal is the identity forward).
    """
    import keras

    import conv_models  # noqa: F401  (registers the custom layers the checkpoint refers to)
    from conv_models import SPEAKER_OUTPUT
    from constants import EMBEDDING_SIZE
    from inference import inspect_checkpoint

    if SPEAKER_OUTPUT not in inspect_checkpoint(checkpoint_file).layer_names:
        return None
    model = keras.models.load_model(checkpoint_file, compile=False)
    names = [layer.name for layer in model.layers]
    embedding = keras.Input((EMBEDDING_SIZE,))
    shared = model.get_layer("shared")(embedding) if "shared" in names else None
    speaker_input = model.get_layer("speaker_task")(shared) if "speaker_task" in names else embedding
    outputs = {SPEAKER_OUTPUT: model.get_layer(SPEAKER_OUTPUT)(speaker_input)}
    for name in names:
        if name.endswith("_pred") and name != SPEAKER_OUTPUT:
            head_input = model.get_layer(f"{name}_hidden")(embedding) if f"{name}_hidden" in names else shared
            outputs[name] = model.get_layer(name)(head_input)
    return keras.Model(embedding, outputs)
