"""Shared pytest setup: hypothesis profiles.

The ``ci`` profile is derandomized (the same examples on every run, so a CI
failure reproduces) and has no deadline (a 2-core machine running notebooks
beside the tests has noisy timings). It is selected when ``CI`` is set.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
