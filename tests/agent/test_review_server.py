"""The review page over real HTTP on 127.0.0.1: state, structure, hull plot, decisions, resume."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from crystalforge.agent.context import Context
from crystalforge.agent.nodes.review import load_reviews
from crystalforge.agent.review_server import make_server
from crystalforge.agent.runner import start_run
from crystalforge.core.spec import Budget, DesignSpec, PropertyTarget

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

TIMEOUT_S = 10


@pytest.fixture
def served(tmp_path: Path, data_dir: Path) -> Iterator[tuple[str, Path]]:
    run_dir = tmp_path / "run"
    spec = DesignSpec(
        request="a stable Mg-O oxide",
        chemical_system=("Mg", "O"),
        max_atoms=8,
        targets=(PropertyTarget(name="e_above_hull", max=0.1),),
        num_candidates=50,
        budget=Budget(max_rounds=2, samples_per_round=4),
    )
    context = Context(
        run_dir=run_dir, data_dir=data_dir, generators=("fake",), relaxer="fake", review=True
    )
    start_run(spec, context)
    server, app = make_server(run_dir, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host!s}:{port}", run_dir
    finally:
        app.wait(60)
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.status, response.read(), response.headers["Content-Type"]


def _post(url: str, data: Any) -> tuple[int, dict[str, Any]]:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _state(base: str) -> dict[str, Any]:
    return json.loads(_get(base + "/api/state")[1])


def _wait_for(base: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = _state(base)
        if state["status"] == status:
            return state
        time.sleep(0.2)
    raise AssertionError(f"run never reached {status!r}; last state {state.get('status')!r}")


def test_page_state_structure_and_hull(served: tuple[str, Path]):
    base, _ = served
    status, page, kind = _get(base + "/")
    assert status == 200
    assert kind.startswith("text/html")
    assert b'<canvas id="viewer"' in page
    assert b"http" not in page.split(b"<script>")[1], "the page loads nothing from outside"

    state = _state(base)
    assert state["status"] == "awaiting_review"
    proposals = state["payload"]["proposals"]
    assert proposals

    cell = json.loads(_get(base + f"/api/structure/{proposals[0]['id']}")[1])
    assert len(cell["corners"]) == 8
    assert len(cell["edges"]) == 12
    assert {s["element"] for s in cell["sites"]} <= {"Mg", "O"}
    assert all(len(s["xyz"]) == 3 for s in cell["sites"])

    status, png, kind = _get(base + "/hull.png")
    assert status == 200
    assert kind == "image/png"
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(base + "/api/structure/c-000000000000")
    assert missing.value.code == 404


def test_bad_decisions_get_400_naming_the_value(served: tuple[str, Path]):
    base, _ = served
    code, answer = _post(base + "/api/review", {"decisions": [{"id": "1", "action": "nuke"}]})
    assert code == 400
    assert "unknown review action 'nuke'" in answer["error"]
    code, answer = _post(base + "/api/review", {"decisions": [{"id": "99", "action": "reject"}]})
    assert code == 400
    assert "no proposal number 99" in answer["error"]
    code, answer = _post(base + "/api/review", b"{oops")
    assert code == 400
    assert "not valid JSON" in answer["error"]
    assert _state(base)["status"] == "awaiting_review"


def test_submitting_resumes_the_run_to_the_next_review_and_the_end(served: tuple[str, Path]):
    base, run_dir = served
    first = _state(base)["payload"]
    target = first["proposals"][0]["id"]
    code, answer = _post(
        base + "/api/review",
        {"decisions": [{"id": target, "action": "reject", "note": "known phase"}]},
    )
    assert code == 202, answer
    state = _wait_for(base, "awaiting_review")
    assert state["payload"]["round"] == 1
    assert load_reviews(run_dir)[0]["note"] == "known phase"

    code, answer = _post(base + "/api/review", {"decisions": []})
    assert code == 202
    state = _wait_for(base, "finished")
    assert state["stop_reason"] == "round budget spent (2 rounds)"
    status, report, _ = _get(base + "/report")
    assert status == 200
    assert b"rejected by reviewer: known phase" in report
    code, answer = _post(base + "/api/review", {"decisions": []})
    assert code == 400
    assert "not waiting for a review" in answer["error"]
