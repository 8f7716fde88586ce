"""Fine-tuning's first phase: only the classifier trains while the backbone is frozen.

A classifier that starts fresh on top of pretrained features sends large, random
gradients into the backbone during its first steps; training it alone first, then every
layer, keeps the pretrained features (the usual recipe: Keras' transfer-learning guide,
timm's and Model Garden's fine-tuning configs). While frozen, the backbone's layers are
not trainable, which in Keras also runs their batch normalisation on its moving
statistics and leaves those statistics as they are (`densenet/batch_norm.py` honours
it): small fine-tuning batches would otherwise pull ImageNet's statistics towards
their own.

The switch happens at a step boundary the controller stops at (`UnfreezeBackbone`), and
the train step is rebuilt for the larger set of variables there. The phase is a
function of the global step alone (steps before `--freeze_backbone_epochs` epochs), so
a run resumed before, at or after the switch trains exactly as one never stopped.
"""

from typing import Callable

from trainer.engine import controller
from trainer.artifacts import weights_by_name


def set_backbone_frozen(model, frozen: bool) -> None:
    """Makes every layer but the classifier untrainable (frozen) or trainable again."""
    for layer in model.layers:
        if layer.name != weights_by_name.CLASSIFIER:
            layer.trainable = not frozen


class UnfreezeBackbone(controller.Action):
    """At `end_step`, makes every layer trainable and calls `on_unfreeze` (which rebuilds the step)."""

    def __init__(self, end_step: int, on_unfreeze: Callable[[], None]):
        self.cadence = controller.At(end_step)
        self.on_unfreeze = on_unfreeze

    def __call__(self, output: controller.LoopOutput) -> None:
        self.on_unfreeze()
