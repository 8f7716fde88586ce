"""DenseNet models (Huang et al., CVPR 2017) in Keras, for TF 2.15+, Keras 2/3.

The trainer needs one thing from here, `create_model(name, ...)`, which returns
a Keras model from images to float32 logits. The ImageNet variants match Keras
Applications weight for weight; DenseNet-BC serves small images and tests.
"""

from densenet.models import MODEL_NAMES, create_model, model_names

__all__ = ['MODEL_NAMES', 'create_model', 'model_names']
