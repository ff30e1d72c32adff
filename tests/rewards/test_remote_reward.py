"""The reward server (``python -m trainer.rewards.serve``) and the ``remote`` client: real server
subprocesses on free loopback ports, equality with the local reward, auth, malformed payloads,
retries with backoff, batching of concurrent requests."""

import asyncio
import http.server
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.errors import UserError
from trainer.rewards import Reward, RewardServerError, build_reward
from trainer.rewards.remote import TOKEN_ENV, encode_video

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-123"
REWARD_ARGS = {"features": "histogram", "bins": 8}


def start_server(*extra):
    """Start a reward server subprocess on a free port (--port 0); its URL comes from wait_for_url."""
    command = [sys.executable, "-m", "trainer.rewards.serve", "--reward", "subject_consistency",
               "--args", json.dumps(REWARD_ARGS), "--port", "0", "--token", TOKEN, *extra]
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    process.log = log
    return process


def wait_for_url(process, timeout=90):
    """Read the server's stdout until it prints its URL (killing it if that takes too long)."""
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            if line.startswith("serving reward"):
                return line.split(" on ")[1].split()[0]
        process.wait(timeout=10)
        process.log.seek(0)
        raise RuntimeError(f"server exited early: {process.log.read()}")
    finally:
        watchdog.cancel()


def stop(process):
    process.log.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def servers():
    """Two servers started in parallel: ``main`` for most tests and ``victim`` to be killed."""
    main_process = start_server("--batch-size", "4")
    victim_process = start_server()
    try:
        yield {"main": wait_for_url(main_process), "victim": (victim_process, wait_for_url(victim_process))}
    finally:
        stop(main_process)
        stop(victim_process)


def videos_for_test(n=3, t=5, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, 1, h, w, 3), generator=g, dtype=torch.uint8)
    noise = torch.randint(0, 40, (n, t, h, w, 3), generator=g, dtype=torch.uint8)
    return (base.expand(n, t, h, w, 3).to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)


def post(url, body, token=TOKEN, content_type="application/json"):
    """POST to ``url``; return (status, decoded JSON answer)."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# ---------------------------------------------------------------- end to end

def test_remote_scores_equal_local_scores(servers):
    local = build_reward("subject_consistency", **REWARD_ARGS)
    remote = build_reward("remote", url=servers["main"], token=TOKEN, batch_size=2)
    videos = videos_for_test(n=3)
    prompts = ["a", "b", "c"]
    expected, got = local(videos, prompts), remote(videos, prompts)  # two requests: 2 + 1 videos
    assert torch.equal(got.scores, expected.scores)
    assert set(got.details) == set(expected.details)
    for key in expected.details:
        assert torch.equal(got.details[key], expected.details[key])
    # Float input is sent as uint8 (round to nearest), exactly as the local reward converts it.
    assert torch.equal(remote(videos.float() / 255, prompts).scores, expected.scores)
    # Videos of different lengths go one request each.
    ragged = [videos[0], videos[1, :3]]
    assert torch.equal(remote(ragged, ["a", "b"]).scores, local(ragged, ["a", "b"]).scores)


def test_concurrent_clients_get_their_own_scores(servers):
    local = build_reward("subject_consistency", **REWARD_ARGS)
    videos = videos_for_test(n=6, seed=3)
    expected = local(videos, None).scores
    results = {}

    def client(i):
        remote = build_reward("remote", url=servers["main"], token=TOKEN)
        results[i] = remote(videos[i:i + 1], [f"p{i}"]).scores

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert torch.equal(torch.cat([results[i] for i in range(6)]), expected)


def test_health_and_token_from_environment(servers, monkeypatch):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(servers["main"] + "/health", timeout=30) as response:
        assert json.loads(response.read()) == {"status": "ok", "reward": "subject_consistency"}
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    remote = build_reward("remote", url=servers["main"] + "/score")
    assert remote(videos_for_test(n=1), [""]).scores.shape == (1,)
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(UserError, match=TOKEN_ENV):
        build_reward("remote", url=servers["main"])


def test_missing_or_wrong_token_is_401(servers):
    body = json.dumps({"prompts": [""], "videos": [encode_video(videos_for_test(n=1)[0])]}).encode()
    status, answer = post(servers["main"] + "/score", body, token=None)
    assert status == 401 and "token" in answer["error"]
    status, _ = post(servers["main"] + "/score", body, token="wrong")
    assert status == 401
    remote = build_reward("remote", url=servers["main"], token="wrong", retries=3)
    start = time.monotonic()
    with pytest.raises(RewardServerError, match=r"rejected the token \(HTTP 401"):
        remote(videos_for_test(n=1), [""])
    assert time.monotonic() - start < 10  # a 401 is not retried


def test_malformed_payloads_are_400_with_a_message(servers):
    url = servers["main"] + "/score"
    good = encode_video(np.zeros((2, 4, 4, 3), dtype=np.uint8))
    cases = [
        (b"{not json", "not valid JSON"),
        (json.dumps([1, 2]).encode(), "JSON object"),
        (json.dumps({"prompts": [], "videos": []}).encode(), "non-empty list"),
        (json.dumps({"prompts": ["a", "b"], "videos": [good]}).encode(), "1 videos but 2 prompts"),
        (json.dumps({"prompts": ["a"], "videos": [{**good, "dtype": "float32"}]}).encode(), "dtype must be 'uint8'"),
        (json.dumps({"prompts": ["a"], "videos": [{**good, "shape": [2, 4, 4]}]}).encode(), "[T, H, W, 3]"),
        (json.dumps({"prompts": ["a"], "videos": [{**good, "data": "!!!"}]}).encode(), "not valid base64"),
        (json.dumps({"prompts": ["a"], "videos": [{**good, "shape": [3, 4, 4, 3]}]}).encode(), "holds 96 bytes"),
        (json.dumps({"prompts": ["a"], "videos": [good], "pickle": "x"}).encode(), "Unknown key"),
    ]
    for body, message in cases:
        status, answer = post(url, body)
        assert status == 400, (body[:60], answer)
        assert message in answer["error"], (message, answer["error"])
    status, answer = post(url, json.dumps({"prompts": ["a"], "videos": [good]}).encode())
    assert status == 200 and answer["scores"] == [1.0]


def multipart_body(parts, boundary="fgboundary"):
    """Encode ``[(name, filename or None, bytes)]`` as multipart/form-data."""
    out = io.BytesIO()
    for name, filename, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disposition}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def test_multipart_mp4_upload(servers):
    iio = pytest.importorskip("imageio.v3")
    frames = np.full((4, 32, 32, 3), (200, 40, 40), dtype=np.uint8)
    try:
        mp4 = iio.imwrite("<bytes>", frames, extension=".mp4", fps=8)
    except Exception as exc:  # no ffmpeg/pyav backend on this machine
        pytest.skip(f"cannot encode mp4 here: {exc}")
    url = servers["main"] + "/score"
    body, content_type = multipart_body([("prompts", None, b'["a red video"]'), ("video", "a.mp4", mp4)])
    status, answer = post(url, body, content_type=content_type)
    assert status == 200, answer
    assert answer["scores"][0] > 0.9  # a static video, up to codec noise
    body, content_type = multipart_body([("prompts", None, b'["x"]'), ("video", "a.mp4", b"not an mp4")])
    status, answer = post(url, body, content_type=content_type)
    assert status == 400 and "not a readable mp4" in answer["error"]


# ---------------------------------------------------------------- failures and retries

def test_killed_server_raises_after_retries(servers):
    process, url = servers["victim"]
    remote = build_reward("remote", url=url, token=TOKEN, retries=2, backoff=0.05, timeout=5)
    assert remote(videos_for_test(n=1), [""]).scores.shape == (1,)
    process.kill()
    process.wait(timeout=10)
    start = time.monotonic()
    with pytest.raises(RewardServerError) as info:
        remote(videos_for_test(n=1), [""])
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert f"reward server at {url} is down (connection refused) after 2 retries" in message
    assert "python -m trainer.rewards.serve" in message
    assert 0.15 <= elapsed < 5  # backoff 0.05 + 0.1 s, no long hang


class _Handler(http.server.BaseHTTPRequestHandler):
    """A fake server: answers every POST with HTTP 500, or sleeps past the client's timeout."""

    mode = "500"
    hits = 0

    def do_POST(self):  # noqa: N802
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "sleep":
            time.sleep(1.0)
        body = json.dumps({"error": "boom"}).encode()
        try:
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode, expected", [
    ("500", "is failing (HTTP 500: boom) after 2 retries"),
    ("sleep", "is slow (no answer within the 0.3 s timeout) after 2 retries"),
])
def test_5xx_and_timeouts_are_retried_with_backoff(mode, expected):
    handler = type("Handler", (_Handler,), {"mode": mode, "hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        remote = build_reward("remote", url=url, token="t", retries=2, backoff=0.05, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(RewardServerError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            remote(videos_for_test(n=1), [""])
        assert handler.hits == 3  # first attempt + 2 retries
        assert 0.15 <= time.monotonic() - start < 8
    finally:
        server.shutdown()
        server.server_close()


def test_server_refuses_non_loopback_host_and_bad_args(capsys):
    from trainer.rewards import serve

    assert serve.main(["--reward", "motion", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert serve.main(["--reward", "motion", "--args", "[1]"]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert serve.main(["--reward", "no_such_reward"]) == 2
    assert "Unknown reward" in capsys.readouterr().err


def test_remote_argument_validation():
    with pytest.raises(UserError, match="url"):
        build_reward("remote", url="127.0.0.1:8123", token="t")
    with pytest.raises(UserError, match="retries"):
        build_reward("remote", url="http://127.0.0.1:1", token="t", retries=-1)


# ---------------------------------------------------------------- batching (in process)

class _Recorder(Reward):
    """Scores each video by its first pixel; remembers batch sizes; rejects the prompt 'bad'."""

    input_format = "uint8"

    def __init__(self):
        self.calls = []

    def score(self, videos, prompts):
        self.calls.append(len(prompts))
        if "bad" in prompts:
            raise UserError("prompt 'bad' is not allowed")
        return videos[:, 0, 0, 0, 0].float()


def test_queue_gathers_concurrent_requests_into_batches():
    from trainer.rewards.serve import RewardServer, _BadRequest, _Job

    async def scenario():
        reward = _Recorder()
        server = RewardServer(reward, token="t", batch_size=4, batch_wait_s=0.0)
        await server._start_worker(None)
        loop = asyncio.get_running_loop()
        sizes = [1, 2, 1, 3, 1]
        jobs = []
        for i, size in enumerate(sizes):  # all queued before the worker runs: "concurrent"
            videos = [np.full((1, 2, 2, 3), 10 * i + k, dtype=np.uint8) for k in range(size)]
            prompts = ["bad" if i == 4 else "ok"] * size
            jobs.append(_Job(videos, prompts, loop.create_future()))
            server._queue.put_nowait(jobs[-1])
        results = await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
        await server._stop_worker(None)
        return reward.calls, results

    calls, results = asyncio.run(scenario())
    # [1, 2, 1] fill 4; [3] would overflow, so it starts the next batch with [1 (bad)]; that batch
    # fails, so its requests are rescored alone: [3] succeeds and only the bad one gets the error.
    assert calls == [4, 4, 3, 1]
    assert [r[0] for r in results[:4]] == [[0.0], [10.0, 11.0], [20.0], [30.0, 31.0, 32.0]]
    assert isinstance(results[4], _BadRequest) and "not allowed" in str(results[4])
