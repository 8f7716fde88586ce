"""DenseNet models (Huang et al., CVPR 2017) in Keras, for TF 2.15+, Keras 2/3.

The trainer needs two things from here: `create_model(name, ...)`, which returns
a Keras model from images to float32 logits, and `all_layers(model)`, its layers
with the nested ones unpacked (for weight decay and weight files). The ImageNet
variants match Keras Applications weight for weight; DenseNet-BC serves small
images and tests.
"""

from densenet.models import (
    MODEL_NAMES,
    ModelError,
    all_layers,
    check_image_size,
    create_model,
)

__all__ = ['MODEL_NAMES', 'ModelError', 'all_layers', 'check_image_size', 'create_model']
