"""`trainer/devices/cpu_isa.py`: the environment a run is refused in, before TensorFlow loads.

`tests/resume_fixture_test.py` runs under `cpu_isa.PORTABLE_ENV`; here, the check that
turns a crash inside TensorFlow (an `ONEDNN_MAX_CPU_ISA` cap that leaves oneDNN no
bfloat16 kernels on an AVX-512 CPU) into one line.
"""

import pytest

from trainer.devices import cpu_isa
from base import errors

AVX512 = {'avx2', 'avx512f'}


def test_a_cap_without_bfloat16_kernels_is_refused_on_an_avx512_cpu():
    with pytest.raises(errors.UserError) as refused:
        cpu_isa.check_environment('bfloat16', {'ONEDNN_MAX_CPU_ISA': 'avx2'}, AVX512)
    assert str(refused.value) == (
        'ONEDNN_MAX_CPU_ISA=avx2 leaves oneDNN no bfloat16 kernels, which TensorFlow uses on '
        'this AVX-512 CPU: also set TF_ENABLE_ONEDNN_OPTS=0, or use --precision=float32'
    )
    with pytest.raises(errors.UserError, match='DNNL_MAX_CPU_ISA=AVX '):
        cpu_isa.check_environment('bfloat16', {'DNNL_MAX_CPU_ISA': 'AVX'}, AVX512)


@pytest.mark.parametrize(
    'precision, environ, cpu_flags',
    [
        ('bfloat16', dict(cpu_isa.PORTABLE_ENV), AVX512),  # oneDNN's ops off: Eigen's bf16.
        ('float32', {'ONEDNN_MAX_CPU_ISA': 'AVX2'}, AVX512),
        ('bfloat16', {'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE_BF16'}, AVX512),
        ('bfloat16', {'ONEDNN_MAX_CPU_ISA': 'AVX2'}, {'avx2'}),  # No AVX-512: Eigen's bf16.
        ('bfloat16', {}, AVX512),
    ],
)
def test_settings_that_run_are_let_through(precision, environ, cpu_flags):
    cpu_isa.check_environment(precision, environ, cpu_flags)
