"""Property tests: any text fed to the loader either loads or raises the project's ConfigError, nothing else."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config.load import check_config_text, load_config_text
from proxy.errors import ConfigError
from tests.config.helpers import MINIMAL

FULL = Path("examples/offline.yaml").read_text(encoding="utf-8")

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=20)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def _load(text: str) -> None:
    try:
        load_config_text(text, env={})
    except ConfigError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert isinstance(issue.message, str) and issue.message


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=400))
def test_random_text(text):
    _load(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_decoded_leniently(data):
    _load(data.decode("utf-8", errors="replace"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from([MINIMAL, FULL]), st.data())
def test_mutated_valid_configs(base, data):
    lines = base.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3))):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["delete", "duplicate", "truncate", "insert", "indent", "swap"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "truncate":
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
        elif op == "insert":
            lines.insert(i, data.draw(st.text(max_size=30)) + "\n")
        elif op == "indent":
            lines[i] = data.draw(st.sampled_from([" ", "  ", "\t", ""])) + lines[i].lstrip()
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    _load("".join(lines))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "providers",
                "models",
                "defaults",
                "retry",
                "cache",
                "state",
                "templates",
                "server",
                "telemetry",
                "template_dir",
                "x",
            ]
        ),
        yaml_values,
    )
)
def test_random_structures(data):
    import yaml

    _load(yaml.safe_dump(data))


def test_check_never_raises_on_a_valid_config():
    assert check_config_text(FULL, env={}).config is not None
