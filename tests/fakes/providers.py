"""Every provider's fake at once, and the environment that points the router at them.

    fakes = start_provider_fakes()
    env = provider_env(fakes)          # keys and base URLs, one pair per provider
    ...
    stop_all(fakes)

Used where a whole stack must reach every provider backend without the network (the
newcomer check, .ci/newcomer.py). `MODELS` names one seeded model per backend that the
fakes serve; the llm-d one is not seeded but discovered from the fake cluster.
"""

from __future__ import annotations

from collections.abc import Mapping

from tests.fakes.anthropic_api import start_anthropic_fake
from tests.fakes.gemini_api import API_KEY as GEMINI_KEY
from tests.fakes.gemini_api import start_gemini_fake
from tests.fakes.openai_api import start_openai_fake
from tests.fakes.server import FakeServer

CLUSTER_MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # what the fake llm-d cluster serves

#: public model id -> the backend that serves it, one per provider backend
MODELS = {
    "gpt-4o-mini": "openai",
    "openrouter/openai/gpt-4o-mini": "openrouter",
    "grok-3-mini": "grok",
    "venice/llama-3.3-70b": "venice",
    "claude-haiku-4-5": "anthropic",
    "gemini-2.5-flash": "google",
    CLUSTER_MODEL: "llm-d",
}


def start_provider_fakes(openai_key: str | None = None) -> dict[str, FakeServer]:
    """One started fake per provider backend, by backend name."""
    return {
        "openai": start_openai_fake(api_key=openai_key),
        "openrouter": start_openai_fake({"openai/gpt-4o-mini": None}),
        "grok": start_openai_fake({"grok-3-mini": None}),
        "venice": start_openai_fake({"llama-3.3-70b": None}),
        "anthropic": start_anthropic_fake(),
        "google": start_gemini_fake(),
        "llm-d": start_openai_fake({CLUSTER_MODEL: 131072}, vllm=True),
    }


def provider_env(
    fakes: Mapping[str, FakeServer], openai_key: str = "sk-fake-0123456789"
) -> dict[str, str]:
    """Each provider's key and base URL variables, pointing at its fake."""
    return {
        "OPENAI_API_KEY": openai_key,
        "OPENAI_BASE_URL": fakes["openai"].url + "/v1",
        "OPENROUTER_API_KEY": "or-key-0123456789",
        "OPENROUTER_BASE_URL": fakes["openrouter"].url + "/v1",
        "XAI_API_KEY": "xai-key-0123456789",
        "XAI_BASE_URL": fakes["grok"].url + "/v1",
        "VENICE_API_KEY": "venice-key-0123456789",
        "VENICE_BASE_URL": fakes["venice"].url + "/v1",
        "ANTHROPIC_API_KEY": "sk-ant-key-0123456789",
        "ANTHROPIC_BASE_URL": fakes["anthropic"].url,
        "GEMINI_API_KEY": GEMINI_KEY,
        "GEMINI_BASE_URL": fakes["google"].url,
        "LLMD_BASE_URL": fakes["llm-d"].url + "/v1",
    }


def stop_all(fakes: Mapping[str, FakeServer]) -> None:
    for fake in fakes.values():
        fake.stop()
