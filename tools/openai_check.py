"""Drives a running `gllm serve` with the official `openai` package, as a user's
program would, and checks what comes back.

    python3 tools/openai_check.py http://127.0.0.1:8080/v1

At temperature 0: the chat answer to "What is the capital of France?"
mentions Paris, the streamed chunks concatenate to the non-streamed text (for
chat and for text completions), and usage counts add up. Prints one JSON
summary line; exits non-zero (with the reason) on the first failed check.
"""

import json
import sys

import openai


def main() -> None:
    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120)

    models = client.models.list()
    ids = [m.id for m in models.data]
    assert len(ids) == 1, ids
    model = ids[0]

    question = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=48)
    choice = chat.choices[0]
    answer = choice.message.content
    assert choice.message.role == "assistant", choice.message
    assert "Paris" in answer, f"the answer does not mention Paris: {answer!r}"
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-"), chat
    u = chat.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 48, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u

    stream = client.chat.completions.create(
        model=model,
        messages=question,
        temperature=0,
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, roles, stream_usage = [], None, [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            stream_usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    streamed = "".join(pieces)
    assert streamed == answer, f"streamed {streamed!r} != non-streamed {answer!r}"
    assert len(pieces) > 3, f"the answer came in {len(pieces)} chunk(s), not token by token"
    assert roles == ["assistant"], roles
    assert finish == choice.finish_reason, (finish, choice.finish_reason)
    assert stream_usage is not None, "no usage chunk although include_usage was set"
    assert (stream_usage.prompt_tokens, stream_usage.completion_tokens) == (u.prompt_tokens, u.completion_tokens)

    prompt = "The capital of France is"
    done = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12)
    text = done.choices[0].text
    assert done.object == "text_completion" and done.choices[0].finish_reason == "length", done
    assert done.usage.completion_tokens == 12, done.usage
    streamed_text = "".join(
        c.choices[0].text
        for c in client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12, stream=True)
        if c.choices
    )
    assert streamed_text == text, f"streamed {streamed_text!r} != non-streamed {text!r}"

    try:
        client.chat.completions.create(model=model, messages=[], max_tokens=4)
        raise AssertionError("empty messages were accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == "messages", e.body

    print(json.dumps({"model": model, "answer": answer, "chunks": len(pieces), "completion": text}))


if __name__ == "__main__":
    main()
