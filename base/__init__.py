"""The base every package stands on: error kinds and how a command reports them.

No TensorFlow at import, so that a command can refuse a mistyped flag at once.

errors.py          the user's mistake vs a bug; one readable line; exit statuses
stderr_filter.py   keeps TensorFlow's harmless C++ start-up lines off the console
"""
