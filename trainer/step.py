"""One replica's train and eval steps: plain functions of (model, optimizer, batch).

The loop (`trainer/loop.py`), not the step, applies `tf.function` and `strategy.run`.
Steps return *sums* over the replica's examples; the loop adds them over replicas and
steps and divides once, so averages are exact whatever the batch split.
"""

from typing import Dict, List, Sequence

import keras
import tensorflow as tf


def decayed_variables(model: keras.Model) -> List[tf.Variable]:
    """The variables that L2 decay applies to: conv and dense kernels only.

    Batch-norm scales and offsets and biases are left alone, as in the paper's Torch
    code (which decays all, but DenseNet has no conv biases) and the usual modern
    practice; decaying BN parameters only shrinks them against their own invariance.
    """
    kernels = []
    for layer in _all_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernels.append(layer.kernel)
    return kernels


def _all_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def l2_term(variables: Sequence[tf.Variable], weight_decay: float) -> tf.Tensor:
    """wd/2 * sum(w^2): its gradient adds wd * w, the paper's and PyTorch's weight decay."""
    if not variables or not weight_decay:
        return tf.constant(0.0)
    squares = [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]
    return 0.5 * weight_decay * tf.add_n(squares)


def _top_k_correct(logits: tf.Tensor, labels: tf.Tensor, k: int) -> tf.Tensor:
    k = min(k, logits.shape[-1])
    return tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32)


def train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    images: tf.Tensor,
    labels: tf.Tensor,
    *,
    global_batch_size: int,
    decay_vars: Sequence[tf.Variable],
    weight_decay: float,
    num_replicas: int,
) -> Dict[str, tf.Tensor]:
    """Forward, backward and update on one replica's share of the global batch.

    Returns:
      Sums over this replica's examples (`cross_entropy`, `top1`, `top5`, `count`) and
      this replica's share of the L2 term (`l2`); summed over replicas these give the
      global figures.
    """
    labels = tf.cast(labels, tf.int32)
    with tf.GradientTape() as tape:
        # Logits in float32 whatever the compute dtype: softmax in bf16 loses the tail.
        logits = tf.cast(model(images, training=True), tf.float32)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        cross_entropy = tf.reduce_sum(per_example)
        # The optimizer sums gradients over replicas, so dividing the per-example sum by
        # the *global* batch makes that sum the gradient of the global mean loss; the L2
        # term is counted once in total, a 1/num_replicas share on each replica.
        l2 = l2_term(decay_vars, weight_decay) / num_replicas
        loss = cross_entropy / global_batch_size + l2
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(gradients, variables))
    return {
        'cross_entropy': cross_entropy,
        'l2': l2,
        'top1': tf.reduce_sum(_top_k_correct(logits, labels, 1)),
        'top5': tf.reduce_sum(_top_k_correct(logits, labels, 5)),
        'count': tf.cast(tf.shape(labels)[0], tf.float32),
    }


def eval_step(
    predict_fn, images: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor
) -> Dict[str, tf.Tensor]:
    """Weighted sums of loss and hits; padding examples carry weight 0.

    Args:
      predict_fn: images -> logits, a Keras model in inference mode or a SavedModel's
        signature, so checkpoints and exports are evaluated by the same code.
    """
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(predict_fn(images), tf.float32)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return {
        'cross_entropy': tf.reduce_sum(per_example * weights),
        'top1': tf.reduce_sum(_top_k_correct(logits, labels, 1) * weights),
        'top5': tf.reduce_sum(_top_k_correct(logits, labels, 5) * weights),
        'count': tf.reduce_sum(weights),
    }
