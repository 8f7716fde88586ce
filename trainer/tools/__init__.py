"""Command-line tools beside training, each with a console entry point.

predict.py   top-5 classes of image files from an export or a model_dir
plot.py      training curves of a model_dir as a PNG
"""
