"""lstmcli serve as a user runs it: a real server process on a free loopback port, real HTTP requests."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmcli.predict import Predictor

from conftest import OFFLINE, ROOT, assert_one_line_error, run_cli

TEXTS = ["a wonderful, delightful film", "dull and boring", "the plot was poor but the cast superb", "", "ok"]
LIMITS = ["--max-texts", "8", "--max-bytes", "4000", "--max-characters", "1000"]


@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with its ONNX export (the copy keeps tiny_run itself torch-only for other tests)."""
    from lstmcli.export import export_run

    run = tmp_path_factory.mktemp("serve") / "run"
    shutil.copytree(tiny_run, run)
    export_run(run)
    return run


class Server:
    """`lstmcli serve` in a child process, on the port it picked (--port 0)."""

    def __init__(self, run: Path, *flags: str):
        self.process = subprocess.Popen([sys.executable, "-m", "lstmcli", "serve", "--model-dir", str(run), "--port",
                                         "0", "--threads", "1", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env={**os.environ, **OFFLINE})
        line = self.process.stdout.readline()  # printed once the model is loaded and warm
        assert line.startswith("serving "), line + self.process.stderr.read()
        self.port = int(line.split("http://127.0.0.1:")[1].split()[0].rstrip("/"))

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, dict | str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read().decode()
            try:
                return response.status, json.loads(data)
            except ValueError:
                return response.status, data
        finally:
            connection.close()

    def predict(self, texts, **options) -> tuple[int, dict]:
        return self.request("POST", "/predict", json.dumps({"texts": texts}).encode(),
                            {"content-type": "application/json"}, **options)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(exported_run):
    running = Server(exported_run, *LIMITS, "--batch-wait-ms", "10")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def offline(exported_run):
    return Predictor.load(exported_run, backend="onnx", threads=1)


def assert_same_predictions(answer: dict, expected) -> None:
    assert len(answer["predictions"]) == len(expected)
    for got, want in zip(answer["predictions"], expected):
        assert got["label"] == want.label
        assert abs(got["probability"] - want.probability) < 1e-6
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-6)


def test_predict_health_and_docs(server, offline):
    status, answer = server.predict(TEXTS)
    assert status == 200
    assert_same_predictions(answer, offline.predict(TEXTS))
    status, health = server.request("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["labels"] == ["negative", "positive"]
    assert health["backend"].startswith("onnx model.onnx")
    assert health["limits"] == {"texts": 8, "body_bytes": 4000, "characters": 1000}
    status, page = server.request("GET", "/docs")
    assert status == 200 and "swagger" in page.lower()
    status, schema = server.request("GET", "/openapi.json")
    assert status == 200 and set(schema["paths"]) == {"/predict", "/health"}
    assert {"200", "400", "413", "422"} <= set(schema["paths"]["/predict"]["post"]["responses"])


def test_serving_with_onnx_never_loads_torch(server):
    maps = Path(f"/proc/{server.process.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see the server's shared libraries")
    assert server.predict(["fine"])[0] == 200
    assert "libtorch" not in maps.read_text()


def test_concurrent_requests_are_batched_and_match_offline_predictions(server, offline):
    texts = [f"{word} {TEXTS[i % len(TEXTS)]}" for i, word in enumerate(["great", "awful", "the", "dull"] * 12)]
    before = server.request("GET", "/health")[1]["batching"]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda text: server.predict([text]), texts))
    assert all(status == 200 for status, _ in answers)
    for text, (_, answer), want in zip(texts, answers, offline.predict(texts)):
        assert_same_predictions(answer, [want])
    after = server.request("GET", "/health")[1]["batching"]
    requests, calls = after["requests"] - before["requests"], after["model_calls"] - before["model_calls"]
    assert requests == len(texts)
    assert calls < requests / 2, (calls, requests)  # concurrent requests shared model calls


BAD_REQUESTS = [  # body, extra headers, status, a fragment of the reason
    (b'{"texts": ["unclosed"', {}, 400, "not valid JSON"),
    (b"\xff\xfe\xfa not utf-8", {}, 400, "not valid JSON"),
    (b"", {}, 400, "not valid JSON"),
    (b"[" * 100_000, {}, 413, "limit is 4,000"),
    (b"[" * 1900 + b"]" * 1900, {}, 400, "not valid JSON"),  # nested deeper than the parser recurses
    (b'["a wonderful film"]', {}, 422, "not an object"),
    (b'{"text": ["a wonderful film"]}', {}, 422, "unknown field 'text'"),
    (b"{}", {}, 422, 'no "texts"'),
    (b'{"texts": "a wonderful film"}', {}, 422, "not a list"),
    (b'{"texts": null}', {}, 422, "not a list"),
    (b'{"texts": []}', {}, 422, "is empty"),
    (b'{"texts": ["fine", 3]}', {}, 422, "texts[1] is a JSON number"),
    (b'{"texts": [["nested"]]}', {}, 422, "texts[0] is a JSON array"),
    (json.dumps({"texts": ["x"] * 9}).encode(), {}, 413, "9 texts in one request, the limit is 8"),
    (json.dumps({"texts": ["x" * 1001]}).encode(), {}, 413, "1,001 characters, the limit is 1,000"),
]


@pytest.mark.parametrize("body, headers, status, fragment", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_a_one_line_reason(server, body, headers, status, fragment):
    got, answer = server.request("POST", "/predict", body, {"content-type": "application/json", **headers})
    assert got == status, answer
    assert fragment in answer["detail"] and "\n" not in answer["detail"]
    assert server.predict(["still up"])[0] == 200


def test_oversized_bodies_are_refused_declared_or_streamed(server):
    big = json.dumps({"texts": ["y" * 900] * 5}).encode()
    status, answer = server.request("POST", "/predict", big)
    assert status == 413 and "4,000" in answer["detail"]
    # no Content-Length: the body arrives in chunks and is cut off once it passes the limit
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/predict", body=iter([big[:3000], big[3000:]]), encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "more than 4,000 bytes" in json.loads(response.read())["detail"]
    connection.close()


def test_wrong_method_and_path(server):
    assert server.request("GET", "/predict")[0] == 405
    assert server.request("POST", "/nowhere", b"{}")[0] == 404


# no subnormal floats: training in this process flushed them to zero (runtime.setup), which hypothesis refuses
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_subnormal=False)
           | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=12)


def is_valid(body: bytes) -> bool:
    try:
        value = json.loads(body)
    except ValueError:
        return False
    return (isinstance(value, dict) and set(value) == {"texts"} and isinstance(value["texts"], list)
            and 0 < len(value["texts"]) <= 8 and all(isinstance(t, str) and len(t) <= 1000 for t in value["texts"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | st.lists(json_values, max_size=3).map(lambda texts: json.dumps({"texts": texts}).encode()))
def test_fuzzed_bodies_get_4xx_and_the_server_stays_up(server, body):
    status, answer = server.request("POST", "/predict", body, {"content-type": "application/json"})
    if is_valid(body):
        assert status == 200, answer
    else:
        assert 400 <= status < 500 and "\n" not in answer["detail"], (status, answer)
    assert server.process.poll() is None


def test_sigterm_answers_requests_in_flight_then_exits_0(exported_run, offline):
    slow = Server(exported_run, "--batch-wait-ms", "400")  # requests wait in the batch when the signal comes
    texts = [f"text {i} {TEXTS[i % len(TEXTS)]}" for i in range(8)]
    with ThreadPoolExecutor(len(texts)) as pool:
        futures = [pool.submit(slow.predict, [text]) for text in texts]
        time.sleep(0.2)
        slow.process.send_signal(signal.SIGTERM)
        answers = [f.result() for f in futures]
    assert slow.process.wait(timeout=30) == 0, slow.process.stderr.read()
    assert all(status == 200 for status, _ in answers)
    for (_, answer), want in zip(answers, offline.predict(texts)):
        assert_same_predictions(answer, [want])
    with pytest.raises(OSError):
        slow.predict(["after the end"], timeout=5)


def test_a_taken_port_or_missing_export_is_a_one_line_error(tiny_run, server):
    result = run_cli("serve", "--model-dir", tiny_run, "--port", server.port, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, f"127.0.0.1:{server.port}", "--port")
    result = run_cli("serve", "--model-dir", tiny_run, "--backend", "onnx", "--port", "0", timeout=120)
    assert_one_line_error(result.returncode, result.stderr, "lstmcli export")


def test_torch_backend_serves_the_same_labels(tiny_run):
    torch_server = Server(tiny_run, "--backend", "torch")
    try:
        status, answer = torch_server.predict(TEXTS)
        assert status == 200 and torch_server.request("GET", "/health")[1]["backend"].startswith("torch")
        expected = Predictor.load(tiny_run, backend="torch", threads=1).predict(TEXTS)
        assert [p["label"] for p in answer["predictions"]] == [p.label for p in expected]
    finally:
        assert torch_server.stop() == 0

