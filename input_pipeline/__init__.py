"""ImageNet-layout TFRecords in, augmented batches out; knows nothing of the model.

decode.py    the record schema (`FEATURES`), `parse_record` with its label check, RGB decode
augment.py   stateless kernels: Inception crop fused with JPEG decode, flip, normalise
dataset.py   the tf.data graphs: reproducible train stream, exact padded eval, synthetic
writer.py    images (or a folder per class) -> TFRecord shards in the slim layout
digits.py    the bundled demo dataset, built from scikit-learn's digits scans
"""
