"""The machine: distribution strategies, Intel Gaudi, the CPU's instruction sets.

distribute.py   the tf.distribute strategy for --device/--distribution_strategy
gaudi.py        habana-tensorflow's loading, for --device=hpu
cpu_isa.py      the CPU features a precision needs (AMX, AVX-512 BF16)
"""
