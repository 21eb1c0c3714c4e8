"""The real `openai` SDK against the real API, queue, worker and SmolLM2 model."""

from __future__ import annotations

import pytest
from openai import BadRequestError, NotFoundError

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_list_shows_the_local_model_as_available(openai_client) -> None:
    models = {m.id: m for m in openai_client.models.list()}
    assert "smollm2-135m" in models
    local = models["smollm2-135m"]
    assert local.owned_by == "local"
    assert local.model_extra["available"] is True
    assert "gpt-4o-mini" not in models  # no OPENAI_API_KEY in the test environment


def test_models_retrieve_by_id_and_unknown(openai_client) -> None:
    assert openai_client.models.retrieve("smollm2-135m").id == "smollm2-135m"
    with pytest.raises(NotFoundError) as err:
        openai_client.models.retrieve("no-such-model")
    assert err.value.response.json()["error"]["code"] == "model_not_found"


def test_non_stream_answers_with_real_text_and_usage(openai_client) -> None:
    resp = openai_client.chat.completions.with_raw_response.create(
        model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=24
    )
    completion = resp.parse()
    assert resp.headers["x-router-backend"] == "local"
    assert resp.headers["x-router-model"] == "smollm2-135m"
    assert resp.headers["x-request-id"]
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "smollm2-135m"
    choice = completion.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens > 10
    assert 0 < completion.usage.completion_tokens <= 24
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_alias_resolves_to_the_model(openai_client) -> None:
    completion = openai_client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=4
    )
    assert completion.model == "smollm2-135m"


def test_stream_concatenates_to_the_non_stream_text(openai_client) -> None:
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    whole = openai_client.chat.completions.create(
        model="smollm2-135m", messages=messages, temperature=0, max_tokens=40
    )
    chunks = list(
        openai_client.chat.completions.create(
            model="smollm2-135m",
            messages=messages,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert text == whole.choices[0].message.content
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(openai_client) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=8, stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_max_tokens_gives_finish_reason_length(openai_client) -> None:
    completion = openai_client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_completion_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_stop_sequence_is_cut_from_the_output(openai_client) -> None:
    full = (
        openai_client.chat.completions.create(
            model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=24
        )
        .choices[0]
        .message.content
    )
    assert "Paris" in full
    cut = openai_client.chat.completions.create(
        model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=24, stop=["Paris"]
    ).choices[0]
    assert cut.message.content == full[: full.index("Paris")]
    assert cut.finish_reason == "stop"


def test_same_seed_same_text_sampled(openai_client) -> None:
    def sample(seed: int) -> str:
        return (
            openai_client.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": "Invent a name for a cat."}],
                temperature=1.2,
                seed=seed,
                max_tokens=16,
            )
            .choices[0]
            .message.content
        )

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))


def test_context_overflow_is_a_400_before_any_token(openai_client) -> None:
    long_prompt = "word " * 9000  # SmolLM2's context is 8192 tokens
    with pytest.raises(BadRequestError) as err:
        openai_client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": long_prompt}], stream=True
        )
    assert err.value.response.json()["error"]["code"] == "context_length_exceeded"


def test_image_parts_are_rejected_by_a_text_only_model(openai_client) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(BadRequestError) as err:
        openai_client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": [image]}]
        )
    assert err.value.response.json()["error"]["param"] == "messages"


def test_registry_changes_show_without_a_restart(openai_client, stack) -> None:
    import subprocess
    import sys
    import time
    from pathlib import Path

    irouter = [str(Path(sys.executable).parent / "irouter"), "models"]
    env = {**stack.env}
    add = [*irouter, "add", "smol-live", "--backend", "local", "--upstream", "smollm2-135m"]
    subprocess.run(add, env=env, check=True, capture_output=True)
    time.sleep(1.2)  # the API re-reads the registry once a second
    assert "smol-live" in {m.id for m in openai_client.models.list()}
    reply = openai_client.chat.completions.create(
        model="smol-live", messages=QUESTION, temperature=0, max_tokens=4
    )
    assert reply.model == "smol-live" and reply.choices[0].message.content
    subprocess.run([*irouter, "remove", "smol-live"], env=env, check=True, capture_output=True)
    time.sleep(1.2)
    with pytest.raises(NotFoundError):
        openai_client.chat.completions.create(model="smol-live", messages=QUESTION)
