"""A local HTTP server on 127.0.0.1 that answers like the Materials Project API.

Handwritten responses in the shape of MP's summary endpoint (``{"data": [...], "meta": {...}}``)
for a tiny Li-O world: Li (bcc), O2 (molecule in a box), Li2O (antifluorite), Li2O2. Energies
are MP-like numbers, not MP's. Every request is recorded (path, query, headers) so tests can
check what mp-api sent.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from pymatgen.core import Lattice, Structure


def _doc(material_id, structure, energy_per_atom, e_form, e_hull, gap, sg):
    comp = structure.composition
    return {
        "material_id": material_id,
        "formula_pretty": comp.reduced_formula,
        "composition": comp.as_dict(),
        "chemsys": "-".join(sorted(el.symbol for el in comp.elements)),
        "structure": structure.as_dict(),
        "symmetry": {"number": sg, "symbol": "P1", "crystal_system": "Cubic"},
        "energy_per_atom": energy_per_atom,
        "formation_energy_per_atom": e_form,
        "energy_above_hull": e_hull,
        "band_gap": gap,
        "density": structure.density,
        "is_stable": e_hull == 0,
        "nelements": len(comp.elements),
    }


def li_o_docs() -> list[dict]:
    li = Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    o2 = Structure(Lattice.cubic(10.0), ["O", "O"], [[0.5, 0.5, 0.44], [0.5, 0.5, 0.56]])
    li2o = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.61), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]]
    ).get_primitive_structure()
    li2o2 = Structure(
        Lattice.hexagonal(3.14, 7.65),
        ["Li"] * 4 + ["O"] * 4,
        [
            [0, 0, 0],
            [0, 0, 0.5],
            [1 / 3, 2 / 3, 0.25],
            [2 / 3, 1 / 3, 0.75],
            [1 / 3, 2 / 3, 0.85],
            [1 / 3, 2 / 3, 0.65],
            [2 / 3, 1 / 3, 0.15],
            [2 / 3, 1 / 3, 0.35],
        ],
    )
    return [
        _doc("mp-135", li, -1.909, 0.0, 0.0, 0.0, 229),
        _doc("mp-12957", o2, -4.948, 0.0, 0.0, 0.0, 12),
        _doc("mp-1960", li2o, -4.760, -2.07, 0.0, 4.9, 225),
        _doc("mp-841", li2o2, -4.460, -1.64, 0.0, 2.0, 194),
    ]


class MPServer:
    """``with MPServer() as server: server.endpoint``; ``server.requests`` lists what came."""

    def __init__(self, docs: list[dict] | None = None, *, fail_summary: bool = False) -> None:
        self.docs = docs if docs is not None else li_o_docs()
        self.fail_summary = fail_summary
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                owner.requests.append(
                    {"path": url.path, "query": query, "api_key": self.headers.get("x-api-key")}
                )
                if url.path.rstrip("/").endswith("heartbeat"):
                    return self._send(
                        200,
                        {
                            "db_version": "2025.09.25",
                            "version": "0.87.3",
                            "access_controlled_batch_ids": [],
                        },
                    )
                if "/materials/summary" in url.path:
                    if owner.fail_summary:
                        return self._send(500, {"detail": "internal error"})
                    data = owner._filter(query)
                    return self._send(200, {"data": data, "meta": {"total_doc": len(data)}})
                return self._send(404, {"detail": f"no route {url.path}"})

            def _send(self, status, body):
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _filter(self, query: dict) -> list[dict]:
        out = []
        for doc in self.docs:
            if "chemsys" in query and doc["chemsys"] not in query["chemsys"].split(","):
                continue
            if "formula" in query:
                from pymatgen.core import Composition

                wanted = {Composition(f).reduced_formula for f in query["formula"].split(",")}
                if doc["formula_pretty"] not in wanted:
                    continue
            ok = True
            for field in ("band_gap", "energy_above_hull", "formation_energy_per_atom", "density"):
                low = query.get(f"{field}_min")
                high = query.get(f"{field}_max")
                if low is not None and doc[field] < float(low):
                    ok = False
                if high is not None and doc[field] > float(high):
                    ok = False
            if ok:
                out.append(doc)
        fields = query.get("_fields")
        if fields:
            keep = fields.split(",")
            out = [{k: v for k, v in d.items() if k in keep} for d in out]
        return out

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> MPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
