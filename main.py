"""Trains or evaluates DenseNet on ImageNet-format TFRecords (README.md, "Quick start").

  python main.py --flagfile=imagenet.cfg --dataset_dir=/data/imagenet --model_dir=/runs/d121
  python main.py --flagfile=demo.cfg                      # CPU demo on bundled digits

The flags and the call are `trainer/tools/train.py`, which an install also offers as
the command `densenet-train`; this file is the repository's own way in.
"""

from trainer.tools import train

if __name__ == '__main__':
    train.run()
