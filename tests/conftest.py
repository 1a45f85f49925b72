"""Shared pytest configuration: registers the fake-upstream fixtures (tests/fakes/fixtures.py)."""

pytest_plugins = ["tests.fakes.fixtures"]
