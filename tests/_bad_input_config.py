"""Rows of tests/test_bad_input.py: config keys and values, the resume record, divergence (issue 22).

Each row is ``(what, run(ctx, capsys), expected)`` as in test_bad_input.CASES: ``expected`` is a
regular expression the :class:`~d2dist.errors.ConfigError` (or DataError) message must match, or
a callable that checks the result of a row that works.
"""

CONFIG_ROWS = []
