"""YAML read from the parser's events gives what yaml.safe_load gives, data or error, and manifests
that share entries through anchors still read whole."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from mt_assets.manifest import load_manifest, parse_manifest
from mt_assets.manifest.yamldata import load_yaml, load_yaml_owned

DOCUMENTS = [
    "",
    "---\n",
    "a: 1\n---\nb: 2\n",  # two documents: safe_load's error
    "x: &a [1, 2]\ny: *a\n",
    "x: *nope\n",
    "<<: {a: 1}\n",
    "a: &x {b: 1}\nc:\n  <<: *x\n  d: 2\n",
    "a: !!binary aGVsbG8=\n",
    "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\n",
    "a: !!set {x, y}\n",
    "? [1, 2]\n: x\n",
    "a: 'quoted 1'\nb: \"2\"\nc: 1e3\nd: 1.5e3\ne: 0x1F\nf: yes\ng: ~\nh: null\ni: .inf\nj: 0o17\nk: 1_000\n",
    "a: 012\nb: 0\nc: -3\nd: +4\ne: 1:30\nf: 00\n",
    "a: [1, {b: c}]\n",
    "- a\n- b: [x]\n",
    "a: b: c\n",
    "key: [unclosed\n",
    "a: &r\n  self: *r\n",
    "&a a: &a b\n",
    "= : 1\n",
    "a: =\n",
    "a: |\n  text\n  more\nb: >\n  folded\n",
    "!!str 12\n",
    "a: !custom x\n",
    "{a: 1, a: 2}\n",
    "x: !!int '12'\n",
    "- !!float 1\n",
    "%YAML 1.1\n---\na: 1\n",
    "a: [x, &s short, *s]\n",
]


def _outcome(load: Any, document: str) -> tuple[Any, ...]:
    try:
        return ("data", repr(load(document)))
    except Exception as e:
        return ("error", type(e).__name__, str(e))


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_data_or_the_error_is_safe_loads(document: str) -> None:
    assert _outcome(load_yaml, document) == _outcome(yaml.safe_load, document)
    assert _outcome(lambda d: load_yaml(io.StringIO(d)), document) == _outcome(yaml.safe_load, document)


def test_only_data_without_aliases_may_be_taken_apart() -> None:
    assert load_yaml_owned("a: [1]\nb: [1]\n")[1]
    assert not load_yaml_owned("a: &x [1]\nb: *x\n")[1]
    assert not load_yaml_owned("a: !!set {x}\n")[1]  # safe_load's data: not known


def test_components_sharing_a_file_list_through_an_anchor_each_keep_it(tmp_path: Path) -> None:
    text = (
        "profile: p\ncomponents:\n"
        "  - {name: a, repo: o/a, revision: main, dir: a, files: &files [{path: x.json, kind: config}]}\n"
        "  - {name: b, repo: o/b, revision: main, dir: b, files: *files}\n"
    )
    (tmp_path / "m.yaml").write_text(text)
    for manifest in (parse_manifest(text, "m.yaml"), load_manifest(tmp_path / "m.yaml")):
        assert [f.target for f in manifest.files] == ["models/a/x.json", "models/b/x.json"]


def test_a_manifest_file_with_a_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("profile: x\ncomponents: [\n  - {name: a\n")
    with pytest.raises(
        ValueError, match=r"^manifest .*broken.yaml: not valid YAML at line \d+, column \d+: "
    ):
        load_manifest(tmp_path / "broken.yaml")
