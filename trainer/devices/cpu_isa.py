"""The environment under which a `--deterministic` run gives the same bits across cores and ISAs.

`--deterministic` makes a run repeat itself bit for bit on the machine that ran it. On
another machine the arithmetic itself can differ, because TensorFlow's CPU kernels are
chosen at run time from what the processor offers and how many threads it has:

- With oneDNN on (TensorFlow's default on x86-64), bfloat16 convolutions run oneDNN's
  native bf16 kernels on CPUs with AVX512_BF16 (or AMX), emulated bf16 on other
  AVX-512 CPUs, and Eigen's (through float32) on CPUs without AVX-512: three different
  roundings of the same step.
- With oneDNN's ops off (`TF_ENABLE_ONEDNN_OPTS=0`), convolutions and matrix products
  still end in oneDNN's sgemm, whose kernel (AVX-512, AVX2, AVX) is picked from the CPU.
- Either way the number of intra-op threads splits some sums (the weight gradient of a
  convolution, reductions) into partial sums whose order follows the split.

Measured on the bundled resume fixture (`tests/resume_fixture_test.py`: a bf16
DenseNet-BC resumed from step 15 to 30, 128 checkpointed values), emulating other CPUs
by capping oneDNN's instruction set (`ONEDNN_MAX_CPU_ISA`) and by other thread counts,
against this 2-core AVX512_BF16 CPU (AMD EPYC, no AMX): an AVX-512 CPU without BF16
differs in 123 values on TensorFlow 2.21 (in none on 2.15), oneDNN off in 123 (123 of
129 on 2.15), 1 or 4 intra-op threads instead of 2 in 9 (both versions). Under
`PORTABLE_ENV` the variations that can be made here gave the same bits: 1 or 2 cores
(`taskset`; TensorFlow 2.21 and 2.15), 1, 2 or 8 inter-op threads (2.21), and the
CPU's own ISA above the cap. Then measured on another CPU, an Intel Xeon with AMX: the
same pinned run differs from the AMD EPYC's in 123 of 128 values after 15 steps (2.21
and 2.15 alike). So the pin makes core counts and instruction sets agree, not every
CPU model; the cause is not found (a kernel that reads the CPU's cache sizes, such as
Eigen's matrix-product blocking, is the suspect), and `tests/resume_fixture_test.py`
makes its reference on the machine it runs on.

The pin, and why each part:

- `TF_ENABLE_ONEDNN_OPTS=0`: one bf16 path on every CPU (Eigen's, through float32). A
  cap of oneDNN's ISA with oneDNN's ops on is not possible for bf16: TensorFlow picks
  oneDNN's bf16 kernels from the CPU's own flags, and a capped oneDNN then has none
  (TensorFlow 2.21 and 2.15: "could not create a primitive descriptor", or a segfault).
- `ONEDNN_MAX_CPU_ISA=AVX`: the sgemm kernel every CPU that runs TensorFlow's x86-64
  wheels has (they are built for AVX). AVX and AVX2 kernels differ (in 6 values on
  TensorFlow 2.21 and 2.15), so the cap is the lowest, not the commonest.
- `TF_NUM_INTRAOP_THREADS=1`: one thread per op, so that no sum is split by the
  machine's core count (inter-op threads and tf.data's threads do not change results).

Its cost is speed: one core per op and no oneDNN (`bench/deterministic.py --portable`
measures it). It must be in the environment before TensorFlow starts, hence an
environment and not a flag: `env $(python -c 'from trainer.devices import cpu_isa;
print(cpu_isa.shell())') python main.py ...`, or the three variables by hand.
"""

import os

PORTABLE_ENV = {
    'TF_ENABLE_ONEDNN_OPTS': '0',
    'ONEDNN_MAX_CPU_ISA': 'AVX',
    'TF_NUM_INTRAOP_THREADS': '1',
}


def shell() -> str:
    """`PORTABLE_ENV` as `NAME=value` words for `env` or a shell prefix."""
    return ' '.join(f'{name}={value}' for name, value in PORTABLE_ENV.items())


# oneDNN's instruction-set caps below the first with bf16 convolutions (AVX512_CORE).
_CAPS_WITHOUT_BF16 = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2')


def check_environment(precision: str, environ=None, cpu_flags=None) -> None:
    """Raises UserError where the environment's oneDNN cap cannot run this precision.

    On a CPU with AVX-512, TensorFlow (2.21 and 2.15 alike) runs bfloat16 convolutions
    with oneDNN's bf16 kernels, choosing them from the CPU's own flags; an
    `ONEDNN_MAX_CPU_ISA` (or `DNNL_MAX_CPU_ISA`) below AVX512_CORE removes them from
    oneDNN, and the first step fails inside TensorFlow ("could not create a primitive
    descriptor for the convolution", or a segfault) as if the trainer were at fault.
    With oneDNN's ops off (`TF_ENABLE_ONEDNN_OPTS=0`, as in `PORTABLE_ENV`) or in
    float32 the cap is fine. `cpu_flags` defaults to /proc/cpuinfo's (no check where
    there is none).
    """
    # Here, not at the top: tests/fixtures/write_resume_fixture.py copies this module
    # into older checkouts, which need only PORTABLE_ENV.
    from base import errors  # pylint: disable=g-import-not-at-top

    environ = os.environ if environ is None else environ
    name = next((n for n in ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA') if environ.get(n)), None)
    if precision != 'bfloat16' or name is None:
        return
    if environ[name].upper() not in _CAPS_WITHOUT_BF16:
        return
    if environ.get('TF_ENABLE_ONEDNN_OPTS', '').strip().lower() in ('0', 'false'):
        return
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    if 'avx512f' not in cpu_flags:
        return
    raise errors.UserError(
        f'{name}={environ[name]} leaves oneDNN no bfloat16 kernels, which TensorFlow '
        'uses on this AVX-512 CPU: also set TF_ENABLE_ONEDNN_OPTS=0, or use '
        '--precision=float32'
    )


def _cpu_flags() -> set:
    """The CPU's flags from /proc/cpuinfo; empty where it cannot be read."""
    try:
        with open('/proc/cpuinfo') as stream:
            for line in stream:
                if line.startswith('flags'):
                    return set(line.partition(':')[2].split())
    except OSError:
        pass
    return set()
