"""TensorBoard summaries: `logs/train` and `logs/eval` under the model_dir, chief only.

Scalars are written from Python between loops, never inside the traced step, which
keeps the step free of summary ops and sidesteps the writer-capture trap of
`tf.function` (see PITFALLS.md).
"""

import os
from typing import Dict

import tensorflow as tf


class SummaryWriters:
    """One event-file writer per split; no-op writers on workers other than the chief."""

    def __init__(self, model_dir: str, *, enabled: bool = True):
        self._writers = {}
        for split in ('train', 'eval'):
            self._writers[split] = (
                tf.summary.create_file_writer(os.path.join(model_dir, 'logs', split))
                if enabled
                else tf.summary.create_noop_writer()
            )

    def scalars(self, split: str, step: int, values: Dict[str, float]) -> None:
        writer = self._writers[split]
        with writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
