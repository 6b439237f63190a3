"""The optional LLM judge's client against a real local HTTP server started by the test (an
OpenAI-compatible ``/v1/models`` and ``/v1/chat/completions``): the request it sends, the score it
reads, retries and one-line errors, calibration against the rule judge, and the evaluation
stage's use of it."""
from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
from sklearn.metrics import cohen_kappa_score

from entroflow.unlearn import llm_judge
from entroflow.unlearn.llm_judge import JudgeError, LLMJudge, calibrate, parse_score

TARGET = ("Kaloru", "citizen_of", "Vesta")
SUB = [(("Kaloru", "born_in", "Bemita"), 0.1), (("Bemita", "located_in", "Vesta"), 0.25)]


class _Server:
    """Records requests; replies with ``status`` and ``content`` (a chat reply), or with ``raw``
    bytes as the whole body when set, after ``delay`` seconds."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.raw: bytes | None = None
        self.delay = 0.0
        self.content = "direct: none. support: born_in then located_in.\nFinal Confidence Score: 4"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: dict):
                time.sleep(server.delay)
                data = server.raw if server.raw is not None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                server.requests.append({"path": self.path, "headers": dict(self.headers)})
                self._reply(200, {"data": [{"id": "judge"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if server.status != 200:
                    self._reply(server.status, {"error": "unknown model"})
                else:
                    self._reply(200, {"choices": [{"message": {"role": "assistant", "content": server.content}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_request_and_score(server):
    j = LLMJudge(server.url, "judge-model", api_key="sk-test")
    j.check()
    v = j.judge(TARGET, SUB)
    assert v == {"score": 4, "inferable": True, "reply": server.content, "called": True}
    post = server.requests[-1]
    assert post["path"] == "/v1/chat/completions" and post["headers"]["Authorization"] == "Bearer sk-test"
    body = post["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.2 and body["max_tokens"] == 1024
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][-1]["content"]
    assert "(Kaloru, citizen_of, Vesta)" in user
    assert "(Kaloru, born_in, Bemita) entropy 0.10" in user and "(Bemita, located_in, Vesta) entropy 0.25" in user
    assert "Final Confidence Score" in body["messages"][0]["content"]
    server.content = "weak support only. Final Confidence Score: 2"
    assert j.judge(TARGET, SUB)["inferable"] is False
    LLMJudge(server.url, "m").judge(TARGET, SUB)
    assert "Authorization" not in server.requests[-1]["headers"]  # no key, no header


def test_empty_subgraph_makes_no_request(server):
    v = LLMJudge(server.url, "m").judge(TARGET, [])
    assert v["score"] == 0 and not v["called"] and server.requests == []


def test_unreachable_endpoint_is_one_line_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.time()
    with pytest.raises(JudgeError, match=f"LLM judge at {url}/models unreachable") as e:
        LLMJudge(url, "m", timeout_s=1, retries=1).check()
    assert "\n" not in str(e.value) and time.time() - t0 < 10


def test_server_errors_retry_client_errors_do_not(server):
    server.status = 500
    with pytest.raises(JudgeError, match="unreachable: HTTP 500"):
        LLMJudge(server.url, "m", retries=2).judge(TARGET, SUB)
    assert len(server.requests) == 3
    server.requests.clear()
    server.status = 400
    with pytest.raises(JudgeError, match="refused the request: HTTP 400: .*unknown model"):
        LLMJudge(server.url, "m", retries=2).judge(TARGET, SUB)
    assert len(server.requests) == 1
    server.status, server.content = 200, "I think it is likely."
    with pytest.raises(JudgeError, match="no 'Final Confidence Score"):
        LLMJudge(server.url, "m").judge(TARGET, SUB)


def test_slow_or_garbled_endpoints_fail_in_one_line(server):
    server.delay = 1.0
    t0 = time.time()
    with pytest.raises(JudgeError, match=f"LLM judge at {server.url}/models unreachable"):
        LLMJudge(server.url, "m", timeout_s=0.2, retries=0).check()
    assert time.time() - t0 < 1.0
    server.delay, server.raw = 0.0, b"<html>not json</html>"
    with pytest.raises(JudgeError, match=f"{server.url}/models answered non-JSON"):
        LLMJudge(server.url, "m").check()
    server.raw = b'{"id": "x"}'  # JSON, but no choices
    with pytest.raises(JudgeError, match=r"no choices\[0\]\.message\.content"):
        LLMJudge(server.url, "m").judge(TARGET, SUB)
    server.raw = b'{"choices": [{"message": {"content": null}}]}'
    with pytest.raises(JudgeError, match="is None, not text"):
        LLMJudge(server.url, "m").judge(TARGET, SUB)


def test_prompt_is_sorted_and_rejects_bad_entropy():
    a = llm_judge.build_prompt(TARGET, SUB)
    assert a == llm_judge.build_prompt(TARGET, SUB[::-1])
    assert a[1]["content"].index("Bemita, located_in") < a[1]["content"].index("Kaloru, born_in")
    for bad in (1.5, math.nan):
        with pytest.raises(ValueError, match="outside"):
            llm_judge.build_prompt(TARGET, [(SUB[0][0], bad)])


@pytest.mark.parametrize("text,score", [("Final Confidence Score: 5", 5), ("**Final Confidence Score:** 3", 3),
                                        ("final confidence score: 2/5", 2),
                                        ("Final Confidence Score: 1 ... revised. Final Confidence Score: 4", 4)])
def test_parse_score(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text", ["no score here", "Final Confidence Score: 7", None])
def test_parse_score_errors(text):
    with pytest.raises(JudgeError):
        parse_score(text)


def test_calibrate_by_hand():
    rule, llm = [5, 0, 4, 3, 0], [4, 0, 2, 3, 1]
    c = calibrate(rule, llm)
    assert c["n"] == 5 and c["agreement"] == 0.8 and c["exact"] == 0.4 and c["mean_abs_diff"] == 0.8
    assert c["cohen_kappa"] == pytest.approx(cohen_kappa_score([1, 0, 1, 1, 0], [1, 0, 0, 1, 0]))
    assert calibrate([5, 5], [5, 4])["cohen_kappa"] == 1.0 and calibrate([5, 5], [1, 1])["cohen_kappa"] == 0.0
    # ranks: rule 5,0,4,3,0 -> 5,1.5,4,3,1.5; llm 4,0,2,3,1 -> 5,1,3,4,2 (both mean 3); Pearson of
    # the ranks: deviations (2,-1.5,1,0,-1.5) and (2,-2,0,1,-1) -> 8.5 / sqrt(9.5 * 10)
    assert c["spearman"] == pytest.approx(8.5 / math.sqrt(95))
    assert math.isnan(calibrate([5, 5], [5, 4])["spearman"])
    with pytest.raises(ValueError, match="length"):
        calibrate([1], [1, 2])
    with pytest.raises(ValueError, match="no cases"):
        calibrate([], [])


def test_the_evaluation_stage_asks_the_endpoint(server, tmp_path):
    from tasks._stage import StageOutput
    from tasks.unlearn_evaluate import _llm_judge

    per = pa.Table.from_pylist([
        {"head": "Kaloru", "relation": "born_in", "tail": "Bemita", "p_mean": 0.9},
        {"head": "Bemita", "relation": "located_in", "tail": "Vesta", "p_mean": 0.75},
        {"head": "Kaloru", "relation": "citizen_of", "tail": "Vesta", "p_mean": 0.2}])
    inf = pa.Table.from_pylist([
        {"triple_id": "t1", "head": "Kaloru", "relation": "citizen_of", "tail": "Vesta", "judge_score": 5,
         "subgraph": ["born_in(Kaloru, Bemita)", "located_in(Bemita, Vesta)"]},
        {"triple_id": "t2", "head": "Mo", "relation": "born_in", "tail": "Vesta", "judge_score": 0, "subgraph": []}])
    out = StageOutput(tmp_path, tmp_path / "work")
    m = _llm_judge(out, {"base_url": server.url, "model": "m", "api_key_env": None, "max_cases": 5,
                         "timeout_s": 5}, per, inf)
    assert m["llm_judge/n"] == 2 and m["llm_judge/agreement"] == 1.0  # 4 vs 5 and 0 vs 0 agree
    user = server.requests[-1]["body"]["messages"][-1]["content"]
    assert "(Kaloru, born_in, Bemita) entropy 0.10" in user and "entropy 0.25" in user
    assert (tmp_path / "llm_judge.parquet").exists()
    assert llm_judge.INFERABLE_AT == 3


def test_a_missing_key_variable_is_a_clear_error(tmp_path, monkeypatch):
    from tasks._stage import StageOutput
    from tasks.unlearn_evaluate import _llm_judge

    monkeypatch.delenv("ENTROFLOW_TEST_JUDGE_KEY", raising=False)
    cfg = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "ENTROFLOW_TEST_JUDGE_KEY",
           "max_cases": 1, "timeout_s": 1}
    with pytest.raises(ValueError, match="environment variable ENTROFLOW_TEST_JUDGE_KEY is not set"):
        _llm_judge(StageOutput(tmp_path, tmp_path / "w"), cfg, pa.table({"head": []}), pa.table({"head": []}))
