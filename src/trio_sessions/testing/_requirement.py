"""The testing kit's requirement beyond the library's own: Hypothesis, checked first.

Without it, `import trio_sessions.testing` fails with a message naming the
extra to install rather than only "No module named 'hypothesis'".
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401
except ImportError as missing:
    raise ImportError('trio_sessions.testing needs Hypothesis: pip install "trio-sessions[testing]"',
                      name="hypothesis") from missing
