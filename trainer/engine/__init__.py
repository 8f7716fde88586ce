"""The reusable training engine: what any Keras model's custom loop needs.

controller.py   Orbit-style controller: runs the loop to each action's next step
loop.py         the per-replica train loop: steps_per_loop steps in one tf.function call
step.py         one train step (loss, accumulation, loss scaling, update) and the eval step
nonfinite.py    the guard against NaN/Inf losses and weights
preemption.py   SIGTERM/SIGINT become a checkpoint at the next loop boundary
"""
