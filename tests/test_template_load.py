"""Template paths: the template directory and a template file that cannot be resolved are reported in the same
words."""

from __future__ import annotations

from proxy.config.load import check_config_file

CONFIG = """\
version: 1
providers:
  mock1: {type: mock}
models:
  default:
    targets: [{provider: mock1, model: m}]
templates:
"""


def test_resolving_a_template_dir_or_file_fails_in_the_same_words(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "a.j2").symlink_to("a.j2")
    head = CONFIG.split("templates:\n")[0]
    messages = {}
    for extra in ("template_dir: loop\ntemplates:\n  t: {text: x}\n", "templates:\n  t: {file: a.j2}\n"):
        (tmp_path / "proxy.yaml").write_text(head + extra)
        (issue,) = check_config_file(tmp_path / "proxy.yaml", env={}).issues
        messages[issue.path] = issue.message
    assert messages == {
        "template_dir": "`loop` cannot be used: its symbolic links form a loop",
        "templates.t.file": "`a.j2` cannot be used: its symbolic links form a loop",
    }
