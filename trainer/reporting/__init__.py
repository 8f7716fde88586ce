"""What a person sees: TensorBoard, the console, the banner, the profiler.

summaries.py   TensorBoard scalars, histograms and images
console.py     the log lines of training and evaluation
banner.py      the run's description at its start
progress.py    progress bars, to a terminal or a log
profiling.py   TensorBoard profiler traces over chosen steps
"""
