"""Tests of the console output: the per-interval train line and the progress bar."""

import io
import re

import pytest

from trainer.reporting import console
from trainer.reporting import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


VALUES = {
    'loss': 2.5,
    'top1': 0.125,
    'learning_rate': 0.1,
    'images_per_second': 500.0,
    'step_time': 0.128,
}


def test_train_line_has_epoch_step_loss_top1_speed_and_eta():
    train_console = console.TrainConsole(total_steps=1000, steps_per_epoch=100)
    # The first line can only go by its own window: 900 steps at 0.128 s.
    first = train_console.line(100, VALUES, now=1000.0)
    assert first == (
        'epoch 1.00/10 step 100/1000 (10.0%): loss 2.5000 top-1 0.1250 lr 0.10000 '
        '500.0 images/s ETA 0:01:56'
    )
    # Later lines go by the wall time since the first one: 100 steps in 50 s, evaluation
    # and checkpoints included, leaves 800 steps in 400 s.
    second = train_console.line(200, VALUES, now=1050.0)
    assert second.startswith('epoch 2.00/10 step 200/1000 (20.0%): ')
    assert second.endswith('ETA 0:06:40')


@pytest.mark.parametrize(
    'seconds, text', [(0, '0:00:00'), (59.2, '0:01:00'), (3725, '1:02:05'), (90061, '1d 01:01:01')]
)
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def test_progress_bar_redraws_one_line_on_a_terminal():
    stream = _Terminal()
    with progress.ProgressBar('Evaluating', 4, stream=stream) as bar:
        for _ in range(4):
            bar.advance()
    text = stream.getvalue()
    assert text.startswith('\rEvaluating [') and text.endswith('\n')
    assert text.count('\n') == 1  # One line, redrawn in place.
    assert '4/4 steps' in text.split('\r')[-1]


def test_progress_bar_writes_plain_lines_to_a_log():
    stream = io.StringIO()
    with progress.ProgressBar('Building', 1000, unit='images', stream=stream) as bar:
        for _ in range(1000):
            bar.advance()
    # A short loop leaves one line: its end, without control characters.
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r'Building \[#{30}\] 1000/1000 images \(\d+\.\d images/s, in 0:00:0\d\)', lines[0]
    )
    assert not re.search(r'[\x00-\x09\x0b-\x1f\x7f]', stream.getvalue())


def test_progress_bar_logs_at_intervals_and_where_it_stopped():
    stream = io.StringIO()
    bar = progress.ProgressBar('Evaluating', 10, stream=stream, log_interval_s=0.0)
    bar.update(3)
    bar.update(5)
    bar.close(completed=True)
    lines = stream.getvalue().splitlines()
    assert [re.search(r'\d+/10', line).group(0) for line in lines] == ['3/10', '5/10']
    assert 'ETA' in lines[0]


def test_disabled_progress_bar_writes_nothing():
    stream = _Terminal()
    with progress.ProgressBar('Evaluating', 3, stream=stream, enabled=False) as bar:
        bar.advance(3)
    assert stream.getvalue() == ''


def test_progress_bar_to_a_log_writes_every_30_seconds_and_at_the_end(monkeypatch):
    # README: when the output is not a terminal, a plain line every 30 seconds and one
    # at the end. The clock is ours; the interval is the bar's default.
    now = [1000.0]
    monkeypatch.setattr(progress.time, 'monotonic', lambda: now[0])
    stream = io.StringIO()
    with progress.ProgressBar('Evaluating', 100, stream=stream) as bar:
        for seconds, done in [(10, 10), (29.9, 20), (30, 30), (59, 40), (60.5, 50), (75, 60)]:
            now[0] = 1000.0 + seconds
            bar.update(done)
        now[0] = 1000.0 + 80
        bar.update(100)
    lines = stream.getvalue().splitlines()
    assert [re.search(r'\d+/100', line).group(0) for line in lines] == [
        '30/100',
        '50/100',
        '100/100',
    ]
    assert lines[-1].endswith('in 0:01:20)')
