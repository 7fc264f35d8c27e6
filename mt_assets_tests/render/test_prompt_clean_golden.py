"""T5 prompt cleaning against the reference's 'whitespace' clean (golden section K, `text_clean_golden.json`).

Exact string equality on all 21 cases, as the README asks; ftfy's rules change between releases,
so the installed ftfy must be the golden's (6.3.1) for the comparison to mean anything.
"""

from __future__ import annotations

import json

import ftfy
import pytest

from mt_assets.models.tokenizers import clean_prompt
from mt_assets_tests.golden import PIPELINE_GOLDEN_DIR, requires_pipeline_golden

pytestmark = requires_pipeline_golden


def _golden() -> dict:
    path = PIPELINE_GOLDEN_DIR / "text_clean_golden.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"cases": [], "versions": {}}


GOLDEN = _golden()


def test_golden_has_all_21_cases_and_our_ftfy_is_the_golden_version():
    assert len(GOLDEN["cases"]) == 21
    assert ftfy.__version__ == GOLDEN["versions"]["ftfy"]


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_clean_prompt_gives_exactly_what_the_reference_tokenizer_receives(case):
    assert clean_prompt(case["input"]) == case["cleaned"]


def test_cleaning_is_not_idempotent_because_html_is_unescaped_twice_per_call():
    # The reference unescapes exactly two levels per call; a third level survives one pass.
    (case,) = [c for c in GOLDEN["cases"] if c["name"] == "tag_with_double_escaped_entity"]
    assert case["cleaned"] == "<p>Fish & chips &amp; peas</p>"
    assert clean_prompt(case["cleaned"]) == "<p>Fish & chips & peas</p>"
