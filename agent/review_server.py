"""The local review page of a run: a small stdlib HTTP server on 127.0.0.1.

Routes (all JSON unless said otherwise):

- ``GET /``: the page (``review_page.html``, self-contained: no CDN, no framework);
- ``GET /api/state``: ``{run, request, status, payload, error, stop_reason, report}`` where
  ``status`` is ``awaiting_review``, ``running``, ``finished`` or ``failed``;
- ``GET /api/structure/<id>``: the relaxed cell for the 3D viewer (Cartesian coordinates in Å,
  cell corners and edges, colours and radii per element);
- ``GET /hull.png``: the reference hull with the candidates placed on it (binary and ternary
  systems), else their energies above the hull as bars;
- ``GET /report``: ``report.md`` of a finished run, as text;
- ``POST /api/review``: ``{"decisions": [...]}``; checked against the pending proposals (400 with
  the error naming the bad value), then the run resumes in a background thread (202).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crystalforge.core.errors import CrystalForgeError, ReviewError

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

RunStatus = Literal["awaiting_review", "running", "finished", "failed"]

MAX_BODY_BYTES = 1_000_000
"""Largest POST body accepted, bytes."""

_COLORS = {
    "H": "#ffffff", "Li": "#cc80ff", "Be": "#c2ff00", "B": "#ffb5b5", "C": "#909090",
    "N": "#3050f8", "O": "#ff0d0d", "F": "#90e050", "Na": "#ab5cf2", "Mg": "#8aff00",
    "Al": "#bfa6a6", "Si": "#f0c8a0", "P": "#ff8000", "S": "#ffff30", "Cl": "#1ff01f",
    "K": "#8f40d4", "Ca": "#3dff00", "Ti": "#bfc2c7", "V": "#a6a6ab", "Cr": "#8a99c7",
    "Mn": "#9c7ac7", "Fe": "#e06633", "Co": "#f090a0", "Ni": "#50d050", "Cu": "#c88033",
    "Zn": "#7d80b0", "Ga": "#c28f8f", "Ge": "#668f8f", "As": "#bd80e3", "Se": "#ffa100",
    "Br": "#a62929", "Sr": "#00ff00", "Y": "#94ffff", "Zr": "#94e0e0", "Nb": "#73c2c9",
    "Mo": "#54b5b5", "Ag": "#c0c0c0", "Sn": "#668080", "Sb": "#9e63b5", "Te": "#d47a00",
    "I": "#940094", "Ba": "#00c900", "La": "#70d4ff", "W": "#2194d6", "Pb": "#575961",
    "Bi": "#9e4fb5",
}  # fmt: skip
"""Jmol-style element colours; others get a colour derived from the symbol."""


def _color(symbol: str) -> str:
    if symbol in _COLORS:
        return _COLORS[symbol]
    value = sum(ord(c) * 97**i for i, c in enumerate(symbol)) % 0xFFFFFF
    return f"#{value | 0x404040:06x}"


def structure_view(run_dir: Path, candidate_id: str) -> dict[str, Any]:
    """What the page's viewer draws for one candidate: its final (relaxed) cell.

    Returns:
        ``id``, ``formula``, ``sites`` (``element``, ``xyz`` in Å, ``color``, ``radius`` in Å),
        ``corners`` (8 cell corners, Å), ``edges`` (12 index pairs), ``center`` (Å) and
        ``colors`` (element -> colour).

    Raises:
        RunError: No stored result for that id.
    """
    import numpy as np
    from pymatgen.core import Element

    from crystalforge.memory.run_store import RunStore

    structure = RunStore(run_dir).load_result(candidate_id).candidate.structure
    matrix = structure.lattice.matrix
    corners = [list(np.array([i, j, k]) @ matrix) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    sites = []
    colors: dict[str, str] = {}
    for site in structure:
        symbol = site.specie.symbol if hasattr(site.specie, "symbol") else str(site.specie)
        element = Element(symbol)
        radius = float(element.atomic_radius or 1.2)
        colors[symbol] = _color(symbol)
        sites.append(
            {
                "element": symbol,
                "xyz": [float(x) for x in site.coords],
                "color": colors[symbol],
                "radius": radius,
            }
        )
    center = list(np.mean(np.array(corners), axis=0))
    return {
        "id": candidate_id,
        "formula": structure.composition.reduced_formula,
        "sites": sites,
        "corners": [[float(x) for x in c] for c in corners],
        "edges": edges,
        "center": [float(x) for x in center],
        "colors": colors,
    }


class ReviewApp:
    """The state behind the page: the run, the pending review and a background resume."""

    def __init__(self, run_dir: Path) -> None:
        from crystalforge.agent.runner import load_run

        self.run_dir = Path(run_dir)
        _, self.context = load_run(self.run_dir)  # fails early on a folder that is no run
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._error: str | None = None
        self._figure_lock = threading.Lock()

    @property
    def running(self) -> bool:
        """Whether a resume is under way in this process."""
        return self._worker is not None and self._worker.is_alive()

    def state(self) -> dict[str, Any]:
        """The page's view of the run (see the module docstring)."""
        from crystalforge.agent.runner import pending_review, run_values

        run_file = json.loads((self.run_dir / "run.json").read_text())
        base: dict[str, Any] = {
            "run": self.run_dir.name,
            "request": run_file.get("request"),
            "error": self._error,
            "payload": None,
            "stop_reason": None,
            "report": (self.run_dir / "report.md").exists(),
        }
        if self.running:
            return {**base, "status": "running"}
        pending = pending_review(self.run_dir)
        if pending is not None:
            return {
                **base,
                "status": "awaiting_review",
                "payload": pending,
                "error": self._error or pending.get("error"),
            }
        values = run_values(self.run_dir)
        status: RunStatus = "finished" if values.get("report_path") else "failed"
        return {**base, "status": status, "stop_reason": values.get("stop_reason")}

    def submit(self, raw: object) -> dict[str, Any]:
        """Check the decisions and resume the run in a background thread.

        Raises:
            ReviewError: Nothing is pending, a resume is already running, or the decisions do
                not fit the proposals.
        """
        from crystalforge.agent.nodes.review import parse_response
        from crystalforge.agent.runner import pending_review, submit_review

        with self._lock:
            if self.running:
                raise ReviewError("the run is already resuming; wait for the next round")
            pending = pending_review(self.run_dir)
            if pending is None:
                raise ReviewError(f"run {self.run_dir.name!r} is not waiting for a review")
            response = parse_response(raw, pending["proposals"])
            self._error = None

            def work() -> None:
                try:
                    submit_review(self.run_dir, response)
                except CrystalForgeError as exc:
                    logger.warning("resuming %s failed: %s", self.run_dir, exc)
                    self._error = str(exc)
                except Exception as exc:  # the page must learn why the run stopped
                    logger.exception("resuming %s crashed", self.run_dir)
                    self._error = f"{type(exc).__name__}: {exc}"

            self._worker = threading.Thread(target=work, name="crystalforge-resume", daemon=True)
            self._worker.start()
        return {"status": "running", "decisions": len(response.decisions)}

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until a background resume finishes (tests, and a clean shutdown)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout_s)

    def hull_png(self) -> bytes:
        """The hull plot of the run's candidates (PNG bytes), drawn with matplotlib."""
        from crystalforge.agent.runner import run_values

        values = run_values(self.run_dir)
        out = self.run_dir / "review" / f"hull-round{values.get('round', 0)}.png"
        with self._figure_lock:
            _draw_hull(out, values, self.context)
        return out.read_bytes()


def _draw_hull(path: Path, values: dict[str, Any], context: Any) -> None:
    """Write the hull figure (or a bar chart of E_hull when no hull can be drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crystalforge.agent.nodes.review import apply_reviews
    from crystalforge.agent.report import _hull_figure, rank  # pyright: ignore[reportPrivateUsage]
    from crystalforge.agent.resources import reference_for
    from crystalforge.core.spec import DesignSpec

    path.parent.mkdir(parents=True, exist_ok=True)
    spec = DesignSpec.model_validate(values["spec"])
    ranked = rank(
        apply_reviews(list(values.get("results") or []), list(values.get("reviews") or []))
    )
    if (
        context.data_dir is not None
        and spec.chemical_system
        and 2 <= len(spec.chemical_system) <= 3
    ):
        try:
            _hull_figure(path, spec, ranked, reference_for(context))
            return
        except (ValueError, KeyError, RuntimeError) as exc:
            logger.warning("could not draw the hull diagram: %s", exc)
    scored = [r for r in ranked if r["e_above_hull"] is not None][:30]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    ax.bar(
        range(len(scored)),
        [float(r["e_above_hull"] or 0.0) for r in scored],
        color=["tab:green" if r["meets_hard"] else "tab:gray" for r in scored],
    )
    ax.set_xticks(range(len(scored)), [r["formula"] for r in scored], rotation=90, fontsize=7)
    ax.set_ylabel("CHGNet energy above hull (eV/atom)")
    ax.set_title("Candidates, best first (green: meets every hard constraint)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_STRUCTURE_RE = re.compile(r"^/api/structure/(?P<id>c-[0-9a-f]{4,40})$")


def _handler(app: ReviewApp) -> type[BaseHTTPRequestHandler]:
    page = resources.files("crystalforge.agent").joinpath("review_page.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        server_version = "crystalforge-review"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("review page: " + format, *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
                elif path == "/api/state":
                    self._json(HTTPStatus.OK, app.state())
                elif (match := _STRUCTURE_RE.match(path)) is not None:
                    self._json(HTTPStatus.OK, structure_view(app.run_dir, match["id"]))
                elif path == "/hull.png":
                    self._send(HTTPStatus.OK, app.hull_png(), "image/png")
                elif path == "/report" and (app.run_dir / "report.md").exists():
                    text = (app.run_dir / "report.md").read_bytes()
                    self._send(HTTPStatus.OK, text, "text/plain; charset=utf-8")
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {path!r}"})
            except CrystalForgeError as exc:
                self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})

        def do_POST(self) -> None:
            if self.path != "/api/review":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"cannot POST to {self.path!r}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return
            body = self.rfile.read(length).decode("utf-8", errors="replace")
            try:
                self._json(HTTPStatus.ACCEPTED, app.submit(body))
            except ReviewError as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

    return Handler


def make_server(run_dir: Path, *, port: int = 0) -> tuple[ThreadingHTTPServer, ReviewApp]:
    """The review server of a run bound to 127.0.0.1 (``port=0``: a free port).

    Raises:
        RunNotFound: ``run_dir`` is not a run folder.
        SetupError: The port is taken.
    """
    from crystalforge.core.errors import SetupError

    app = ReviewApp(run_dir)
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler(app))
    except OSError as exc:
        raise SetupError(f"cannot listen on 127.0.0.1:{port}: {exc}; try --port 0") from None
    server.daemon_threads = True
    return server, app


def serve(
    run_dir: Path, *, port: int = 8765, announce: Callable[[str], None] | None = None
) -> None:
    """Serve the review page until interrupted (Ctrl-C); ``announce`` gets the address."""
    announce = announce or logger.info
    server, app = make_server(run_dir, port=port)
    host, bound = server.server_address[:2]
    announce(f"Review page for {Path(run_dir).name}: http://{host!s}:{bound}/  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        announce("Stopping the review page.")
    finally:
        server.server_close()
        app.wait()
