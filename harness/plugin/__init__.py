"""treegate's pytest plugin, one module per job; :mod:`harness.pytest_plugin` registers them.

* :mod:`~harness.plugin.options` -- the command-line options;
* :mod:`~harness.plugin.session` -- the session's :class:`~harness.plugin.session.Harness`:
  repository, fixture trees, images, machines;
* :mod:`~harness.plugin.collection` -- parametrization over arches, external and installed
  tests, pytest-xdist sizing;
* :mod:`~harness.plugin.fixtures` -- the fixtures suites use;
* :mod:`~harness.plugin.outcomes` -- failed versus error, per-test timeouts, failure summaries;
* :mod:`~harness.plugin.results` -- the results file the gate reads.
"""
