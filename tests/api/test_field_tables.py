"""The request-field tables agree with each other and with OpenAI: every field the openai
SDK can send is known, every backend kind has a pass-through list in
workers/providers.json, every field a backend refuses (400) is on its list, so that the
API does not drop it before the refusal, and docs/providers.md shows the lists as they are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api.schemas import ROUTER_FIELDS, SPEC_FIELDS
from registry.models import KINDS
from workers import anthropic_translate, google_translate, openai_compat
from workers.local import text as local_text
from workers.providers import kind_table, pass_through, provider_table

ROOT = Path(__file__).resolve().parents[2]


def test_every_field_the_openai_sdk_sends_is_accepted() -> None:
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase

    assert set(CompletionCreateParamsBase.__annotations__) | {"stream"} <= SPEC_FIELDS
    assert ROUTER_FIELDS <= SPEC_FIELDS


def test_every_kind_has_a_list_and_no_list_names_a_field_the_router_reads() -> None:
    assert set(kind_table()) == set(KINDS)
    for kind in KINDS:
        assert not pass_through("", kind) & ROUTER_FIELDS, kind
    for backend, spec in provider_table().items():
        assert spec["kind"] in KINDS, backend
        assert not set(spec.get("pass_through", ())) & ROUTER_FIELDS, backend


@pytest.mark.parametrize(
    ("kind", "refused"),
    [
        ("openai-compatible", set(openai_compat.UNSUPPORTED)),
        ("llm-d", set(openai_compat.UNSUPPORTED)),
        ("anthropic", set(anthropic_translate.UNSUPPORTED)),
        ("google", set(google_translate.UNSUPPORTED_FIELDS) | {"modalities"}),
        ("local", set(local_text._UNSUPPORTED)),
    ],
)
def test_fields_a_backend_refuses_reach_it_so_the_refusal_stays(kind, refused) -> None:
    """A backend answers 400 for a field it cannot honour only if the field gets to it."""
    assert refused - ROUTER_FIELDS <= pass_through("", kind)


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_providers_page_shows_the_lists_of_providers_json() -> None:
    page = _section((ROOT / "docs" / "providers.md").read_text(), "Pass-through fields")
    rows = [line.split("|")[1:-1] for line in page.splitlines() if line.startswith("| `")]
    shown = {re.findall(r"`([^`]+)`", row[0])[0]: row[1:] for row in rows}
    for kind, spec in kind_table().items():
        extends, fields = shown.pop(kind)
        assert re.findall(r"`([^`]+)`", extends) == ([spec["extends"]] if "extends" in spec else [])
        assert re.findall(r"`([^`]+)`", fields) == spec["pass_through"], kind
    for backend, spec in provider_table().items():
        if "pass_through" in spec:
            assert re.findall(r"`([^`]+)`", shown.pop(backend)[0]) == spec["pass_through"]
    assert shown == {}, "rows for lists providers.json does not have"
