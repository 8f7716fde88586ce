"""The training program: builds a run from a `RunConfig` and drives it (docs/ARCHITECTURE.md).

By role, each layer importing only those below it (setup.cfg's import-linter contract):

tools/          the commands: train (main.py, densenet-train), predict, plot
run.py          train(config) and evaluate(config): the state, the controller, the actions
actions.py evaluation.py finetune.py preflight.py run_data.py     the run's parts
artifacts/      what a run leaves on disk: checkpoints, weights, exports, the model_dir
reporting/      what a person sees: TensorBoard, log lines, progress, banner, profiler
engine/         the reusable loop: controller, train loop, step, non-finite guard, signals
optimization/   optimizers, learning-rate schedules, loss scaling, weight averages
devices/        distribution strategies, Intel Gaudi, the CPU's instruction sets
config.py       RunConfig: every setting, its default, help text and value checks
image_sizes.py  the training image size of each epoch, and the evaluation size
"""
