"""The README's first example, exactly as written there, through the whole stack at the
local worker's default sampling: it names Paris and never runs to max_tokens.

The request sets nothing but the model and one user message (and a seed per run, which
leaves the sampling defaults in force), so the worker's LOCAL_* defaults decide the answer.
Why the defaults are what they are: bench/local_defaults.py and docs/mac-worker.md.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

README_REQUEST = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}
RUNS = 20


def test_readme_example_names_paris_and_never_runs_to_max_tokens(openai_client) -> None:
    def ask(seed: int):  # type: ignore[no-untyped-def]
        return openai_client.chat.completions.create(**README_REQUEST, seed=seed)

    with ThreadPoolExecutor(4) as pool:  # the session worker's concurrency
        completions = list(pool.map(ask, range(RUNS)))
    answers = [(c.choices[0].finish_reason, c.choices[0].message.content) for c in completions]
    assert sum("Paris" in (text or "") for _, text in answers) >= RUNS - 1, answers
    assert [a for a in answers if a[0] == "length"] == [], answers
    assert all(0 < c.usage.completion_tokens < 512 for c in completions)
