"""Regenerates README.md's demo figures, sample log and flag defaults from the code.

  python docs/update_readme.py           # runs the demo afresh (minutes), then rewrites
  python docs/update_readme.py --check   # no run: exit 1 where README.md differs

A run writes `docs/demo_log.txt` (the console of `python main.py --flagfile=demo.cfg`
in a fresh folder, as a user sees it, after a header naming the machine) and
`docs/demo_curves.png` (`python -m trainer.tools.plot` of that run). README.md is then
rendered from them and from `trainer/config.py`:

- the sample log in "Watching a run": the banner, the first two log lines and the
  first evaluation line of the demo's log, without their log prefixes;
- the demo's row of "Measured results": its final top-1, top-5, cross-entropy and weights
  fingerprint, and the machine;
- the default column of the flags table: each flag's default as `--helpfull` shows it.

`tests/readme_test.py` checks that README.md is what `render` makes of it, and that
the log's lines still have the shape the trainer prints, so that neither can go stale.
"""

import argparse
import dataclasses
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
DEMO_LOG = os.path.join(ROOT, 'docs', 'demo_log.txt')
DEMO_CURVES = os.path.join(ROOT, 'docs', 'demo_curves.png')

# absl's prefix of a log line: `I1206 00:57:54.260892 140645316729728 run.py:316] `.
_LOG_PREFIX = re.compile(r'^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ')
_SAMPLE_BEGIN = '<!-- sample log: docs/update_readme.py writes it from docs/demo_log.txt -->'
_SAMPLE_END = '<!-- end of sample log -->'
_RESULT_ROW = re.compile(r'^\| demo: final validation top-1 \|.*$', re.MULTILINE)


def machine() -> str:
    """The CPU model and core count, e.g. `Intel(R) Xeon(R) Platinum 8481C, 2 cores`."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as stream:
            found = re.search(r'^model name\s*:\s*(.+)$', stream.read(), re.MULTILINE)
        name = found.group(1).strip() if found else name
    except OSError:
        pass
    return f'{name}, {os.cpu_count()} cores'


def run_demo(log_path: str = DEMO_LOG, curves_path: str = DEMO_CURVES) -> None:
    """Runs the demo as README.md says, in a fresh folder; writes its log and curves."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, os.path.join(ROOT, 'main.py'), f'--flagfile={ROOT}/demo.cfg']
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f'the demo failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
        import tensorflow as tf  # noqa: PLC0415  (for the header only)

        header = (
            f'# python main.py --flagfile=demo.cfg, in a fresh folder, on {machine()}, '
            f'TensorFlow {tf.__version__}, {datetime.date.today().isoformat()}\n'
        )
        with open(log_path, 'w') as stream:
            stream.write(header + done.stderr + done.stdout)
        # From the run's folder, so that the picture's title is README's demo_run/model.
        subprocess.run(
            [
                sys.executable,
                '-m',
                'trainer.tools.plot',
                'demo_run/model',
                f'--output={curves_path}',
            ],
            cwd=folder,
            env={**os.environ, 'PYTHONPATH': ROOT},
            check=True,
        )


def log_lines(log: str):
    """The log's lines without absl's prefixes."""
    return [_LOG_PREFIX.sub('', line) for line in log.splitlines()]


def sample(log: str) -> list:
    """The banner, the first two step lines and the first evaluation line between them."""
    lines = log_lines(log)
    start = next(i for i, line in enumerate(lines) if line.startswith('Model: '))
    end = next(i for i, line in enumerate(lines) if line.startswith('Model dir: '))
    steps = [i for i, line in enumerate(lines) if line.startswith('epoch ')][:2]
    evaluating = next(
        line for line in lines[steps[0] : steps[1]] if line.startswith('Evaluating [')
    )
    return [*lines[start : end + 1], lines[steps[0]], evaluating, lines[steps[1]]]


def result(log: str) -> dict:
    """The demo's final figures: the Validation line and the weights fingerprint."""
    lines = log_lines(log)
    header = lines[0]
    final = [line for line in lines if line.startswith('Validation top-1 ')][-1]
    figures = re.match(
        r'Validation top-1 ([\d.]+), top-5 ([\d.]+), cross-entropy ([\d.]+) over (\d+) '
        r'examples',
        final,
    )
    fingerprint = [line for line in lines if line.startswith('Trainable weights fingerprint')]
    return {
        'top1': float(figures.group(1)),
        'top5': float(figures.group(2)),
        'cross_entropy': figures.group(3),
        'examples': int(figures.group(4)),
        'fingerprint': fingerprint[-1].rsplit(': ', 1)[1],
        'machine': re.search(r' on (.+), TensorFlow ([\d.]+), ', header).group(1, 2),
    }


def result_row(log: str) -> str:
    figures = result(log)
    correct = round(figures['top1'] * figures['examples'])
    cpu, version = figures['machine']
    return (
        '| demo: final validation top-1 | `python main.py --flagfile=demo.cfg` (deterministic, '
        f'`--seed=1`), by `docs/update_readme.py` on {cpu}, TensorFlow {version} | '
        f'{100 * figures["top1"]:.2f}% ({correct} of {figures["examples"]}), top-5 '
        f'{100 * figures["top5"]:.0f}%, cross-entropy {figures["cross_entropy"]}; weights fingerprint '
        f'`{figures["fingerprint"]}` (`docs/demo_log.txt`) |'
    )


def default_text(value) -> str:
    """A default as the flags table shows it: as `--helpfull` does, blank for none."""
    if value is None or value == '' or value == ():
        return ''
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ','.join(str(item) for item in value)
    return str(value)


def flag_defaults() -> dict:
    sys.path.insert(0, ROOT)
    from trainer import config as config_lib  # noqa: PLC0415

    return {field.name: field.default for field in dataclasses.fields(config_lib.RunConfig)}


def render_flags_table(readme: str) -> str:
    """README with each flag row's default cell set from trainer/config.py."""
    defaults = flag_defaults()

    def row(match):
        name = match.group(1)
        if name not in defaults:
            return match.group(0)
        text = default_text(defaults[name])
        return f'| `--{name}` | {text} |' if text else f'| `--{name}` | |'

    return re.sub(r'^\| `--(\w+)` \| [^|]*\|', row, readme, flags=re.MULTILINE)


def render(readme: str, log: str) -> str:
    """README.md as the demo's log and the code make it."""
    block = '\n'.join(['```', *sample(log), '```'])
    before, rest = readme.split(_SAMPLE_BEGIN, 1)
    _, after = rest.split(_SAMPLE_END, 1)
    readme = f'{before}{_SAMPLE_BEGIN}\n{block}\n{_SAMPLE_END}{after}'
    readme = _RESULT_ROW.sub(lambda _: result_row(log), readme, count=1)
    return render_flags_table(readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='compare only; exit 1 on a difference')
    args = parser.parse_args()
    if not args.check:
        run_demo()
    with open(README) as stream:
        readme = stream.read()
    with open(DEMO_LOG) as stream:
        rendered = render(readme, stream.read())
    if args.check:
        if rendered != readme:
            print('README.md differs from what docs/update_readme.py renders', file=sys.stderr)
            return 1
        return 0
    with open(README, 'w') as stream:
        stream.write(rendered)
    print(f'wrote {README}, {DEMO_LOG} and {DEMO_CURVES}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
