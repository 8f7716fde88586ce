"""What a run leaves on disk, and the folder that holds it.

checkpoint.py        checkpoints: save, restore, keep N, check what is restored
weights_by_name.py   weights from .h5 files and other checkpoints, layer by layer
export.py            SavedModels with their serving signatures
model_dir.py        the model_dir (--model_dir): its flags.cfg, what belongs to it
run_lock.py          one trainer per model_dir at a time
"""

from base import errors


class CheckpointError(errors.UserError):
    """No usable checkpoint or weights file, or one that does not fit the model."""
