"""Registers treegate's pytest plugin for runs from a clone.

An installed treegate registers the same module through its ``pytest11`` entry point, under
the module's own name, so pytest loads it once either way.
"""

pytest_plugins = ["harness.pytest_plugin"]
