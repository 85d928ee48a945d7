"""`python -m src.serve` as users call it: a live server on 127.0.0.1, driven through the official `openai` client."""

import json
import re
import socket
import subprocess
import sys
import time

import openai
import pytest
import torch

from src.errors import UserError
from src.generate import main as generate_main
from tests.helpers import REPO, LiveServer

KEY = "sk-test-key"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(ckpt):
    live = LiveServer(ckpt, "--max_tokens_cap", "5000", "--workers", "2")  # worker processes, whatever the cores
    yield live
    live.close()


def generated(capsys, ckpt, *args) -> list[str]:
    """What `python -m src.generate` prints for these flags, each sample without its prompt."""
    generate_main([f"--ckpt_path={ckpt}", "--cache=window", *args])
    samples = capsys.readouterr().out.removesuffix("\n").split("\n---------------\n")
    prompt = next(a.split("=", 1)[1] for a in args if a.startswith("--prompt="))
    return [s.removeprefix(prompt) for s in samples]


def test_a_seeded_completion_is_what_src_generate_prints_streamed_or_not(server, ckpt, capsys):
    # past the 16-token window, so the window's refill is part of what must agree
    flags = ["--prompt=All:", "--max_new_tokens=80", "--seed=11", "--temperature=0.9", "--top_k=8"]
    expected = generated(capsys, ckpt, *flags)[0]
    client = server.client()
    options = dict(model="any", prompt="All:", max_tokens=80, seed=11, temperature=0.9, extra_body={"top_k": 8})
    # while another long completion decodes beside it: its text must not depend on company
    company = client.completions.create(**{**options, "seed": 3, "max_tokens": 3000, "stream": True})
    reply = client.completions.create(**options)
    assert reply.choices[0].text == expected
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 80)
    assert reply.model == "g"  # the run's name
    chunks = list(client.completions.create(**options, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 80
    company.close()


def test_n_choices_are_src_generate_num_samples(server, ckpt, capsys):
    flags = ["--prompt=Be", "--max_new_tokens=30", "--seed=5", "--num_samples=3", "--temperature=1"]
    expected = generated(capsys, ckpt, *flags)
    reply = server.client().completions.create(model="g", prompt="Be", max_tokens=30, seed=5, n=3, temperature=1)
    assert [c.text for c in sorted(reply.choices, key=lambda c: c.index)] == expected
    assert len(set(expected)) == 3


def test_stop_ends_the_text_where_a_stop_text_first_appears(server):
    client = server.client()
    full = client.completions.create(model="g", prompt="All:", max_tokens=60, seed=2).choices[0].text
    stop = full[25:27]
    reply = client.completions.create(model="g", prompt="All:", max_tokens=60, seed=2, stop=[stop, "@@"])
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_models_health_metrics_and_the_playground(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["g"]
    assert server.get("/health") == (200, '{"status":"ok"}')
    status, text = server.get("/metrics")
    for name in ("chargpt_requests_total", "chargpt_tokens_generated_total", "chargpt_completions_active",
                 "chargpt_completions_queued", "chargpt_time_to_first_token_seconds_bucket",
                 "chargpt_tokens_per_second"):  # fmt: skip
        assert name in text, name
    if sys.platform == "linux":  # where prometheus_client reads a process's figures
        assert "chargpt_worker1_process_cpu_seconds_total" in text
    status, page = server.get("/")
    assert status == 200 and "<textarea" in page and "/v1/completions" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


BAD = {
    "malformed JSON": (b'{"prompt": "All:",', 400, None, "not valid JSON"),
    "wrong type": (b'{"prompt": "All:", "max_tokens": "many"}', 400, "max_tokens", "valid integer"),
    "unknown field": (b'{"prompt": "All:", "temprature": 0.5}', 400, "temprature", "unknown field"),
    "not an object": (b"[1, 2]", 400, None, "JSON object"),
    "outside the vocabulary": (b'{"prompt": "caf\\u00e9 \\u20ac"}', 400, "prompt", "'\u00e9' at 3, '\u20ac' at 5"),
    "max_tokens above the cap": (b'{"max_tokens": 5001}', 400, "max_tokens", "--max_tokens_cap"),
    "negative temperature": (b'{"temperature": -0.5}', 400, "temperature", "temperature must be 0"),
    "top_p out of range": (b'{"top_p": 1.5}', 400, "top_p", "top_p must be in (0, 1]"),
    "unsupported suffix": (b'{"suffix": "x"}', 400, "suffix", "not supported"),
    "a 10 MB body": (b'{"prompt": "' + b"a" * 10_000_000 + b'"}', 413, None, "over this server's limit"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_its_4xx_in_openais_shape_and_the_server_goes_on(server, case):
    body, status, param, words = BAD[case]
    got, reply, _ = server.post(body, {"Content-Type": "application/json"})
    assert got == status
    assert set(reply) == {"error"} and words in reply["error"]["message"], reply
    assert reply["error"]["param"] == param and reply["error"]["type"] == "invalid_request_error"
    again = server.client().completions.create(model="g", prompt="All:", max_tokens=5, seed=1)
    assert len(again.choices[0].text) == 5


def test_the_openai_client_raises_its_own_error_for_a_refusal(server):
    with pytest.raises(openai.BadRequestError, match="temperature must be 0"):
        server.client().completions.create(model="g", prompt="All:", temperature=-1)


def test_a_stream_the_client_leaves_frees_its_slot(server):
    stream = server.client().completions.create(model="g", prompt="All:", max_tokens=5000, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert server.metric("chargpt_completions_active") >= 1
    stream.close()
    assert server.wait_until_idle() == 0


def test_a_waiting_request_whose_client_leaves_frees_its_slot(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        body = json.dumps({"prompt": "All:", "max_tokens": 5000}).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        )
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        deadline = time.time() + 10
        while not server.metric("chargpt_completions_active") and time.time() < deadline:
            time.sleep(0.02)
    assert server.wait_until_idle() == 0


def test_an_api_key_is_required_when_set_and_a_full_queue_says_when_to_retry(ckpt):
    live = LiveServer(ckpt, "--max_batch", "1", "--max_queue", "0", env={"CHARGPT_API_KEY": KEY})
    try:
        assert any("API key" in line for line in live.banner)
        with pytest.raises(openai.AuthenticationError, match="API key"):
            live.client("wrong").completions.create(model="g", prompt="All:", max_tokens=5)
        assert live.get("/v1/models")[0] == 401
        assert live.get("/health")[0] == 200
        client = live.client(KEY)
        assert len(client.completions.create(model="g", prompt="All:", max_tokens=5).choices[0].text) == 5
        busy = client.completions.create(model="g", prompt="All:", max_tokens=4000, stream=True)
        next(iter(busy))  # it holds the only slot
        status, reply, headers = live.post(b'{"max_tokens": 5}', {"Authorization": f"Bearer {KEY}"})
        assert status == 503 and headers.get("Retry-After") == "1" and "busy" in reply["error"]["message"]
        busy.close()
    finally:
        live.close()


def test_a_taken_port_is_a_clear_error(ckpt):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "src.serve", "--ckpt_path", str(ckpt), "--port", str(port)]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_readmes_curl_and_the_openai_client_example_work(server, capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Serve it") : readme.index("## Evaluate")]
    body = re.search(r"-d '(\{.*?\})'", section).group(1).replace('"ROMEO:"', '"All:"')  # the tiny vocabulary
    status, reply, _ = server.post(body.encode(), {"Content-Type": "application/json"})
    assert status == 200 and len(reply["choices"][0]["text"]) == 200
    docs = (REPO / "docs" / "serving.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", docs[docs.index("## The API") :], re.S).group(1)
    code = code.replace("http://127.0.0.1:8000", server.url).replace('model="shakespeare_char"', 'model="g"')
    code = code.replace('"ROMEO:"', '"All:"')
    exec(code, {})
    assert len(capsys.readouterr().out) == 200


@pytest.mark.parametrize(
    ("cores", "device", "flags", "expected"),
    [
        (2, "cpu", [], (2, 1)),  # a worker process per core, the event loop beside them
        (1, "cpu", [], (1, 1)),
        (8, "cpu", [], (2, 3)),
        (8, "cpu", ["--max_batch", "1"], (1, 7)),  # one slot: one worker
        (8, "cuda", [], (1, 7)),  # a GPU decodes in the server's own process
        (2, "cpu", ["--workers", "1", "--threads", "2"], (1, 2)),
    ],
)
def test_workers_and_threads_settle_from_the_cores(monkeypatch, cores, device, flags, expected):
    from src.serve import build_parser, check_args, place_workers

    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    args = build_parser().parse_args(["--ckpt_path", "x", *flags])
    check_args(args)
    place_workers(args, torch.device(device))
    assert (args.workers, args.threads) == expected


@pytest.mark.parametrize(
    ("flags", "device", "message"),
    [
        (["--workers", "0"], "cpu", "--workers must be positive, got 0"),
        (["--workers", "3", "--max_batch", "2"], "cpu", "--workers 3 is more than --max_batch 2"),
        (["--workers", "2"], "cuda", "--workers 2 decodes on the CPU, not cuda: leave --workers at 1"),
    ],
)
def test_workers_that_cannot_run_are_refused_by_name(flags, device, message):
    from src.serve import build_parser, check_args, place_workers

    args = build_parser().parse_args(["--ckpt_path", "x", *flags])
    with pytest.raises(UserError, match=re.escape(message)):
        check_args(args)
        place_workers(args, torch.device(device))
