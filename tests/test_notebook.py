"""The example notebook runs end to end and plays audio.

The quick size runs the notebook's real path (the joe voice loaded and regrown, a donor of the
voice itself slowed down, a cadence transplant) with a few steps everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "cadence_transplant.ipynb"


@pytest.mark.slow
def test_cadence_notebook_executes_and_plays_before_and_after(tmp_path: Path, monkeypatch, joe_voice) -> None:
    nbformat = pytest.importorskip("nbformat", reason="executing the notebook needs nbformat (dev extra)")
    nbclient = pytest.importorskip("nbclient", reason="executing the notebook needs nbclient (dev extra)")
    pytest.importorskip("ipykernel", reason="executing the notebook needs ipykernel (dev extra)")
    monkeypatch.setenv("VITS_SURGERY_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("VITS_SURGERY_CACHE", str(tmp_path / "cache"))  # regrow for real, not from a cache
    monkeypatch.setenv("VITS_SURGERY_TEST_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the cell if any cell fails

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    players = [o for o in outputs if "text/html" in o.get("data", {}) and "<audio" in o["data"]["text/html"]]
    # the donor sample, before (twice: on its own and beside after) and after
    assert len(players) == 4
    assert all("base64," in o["data"]["text/html"] for o in players)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "duration_predictor" in text  # the organ table
    assert "regrown:" in text and "from cache" not in text
    assert any((tmp_path / "cache" / "regrow").iterdir())  # the regrown organs were cached
    assert "before" in text and "after" in text
    run = tmp_path / "cadence_notebook_out" / "run"
    assert (run / "report.html").is_file()
    assert sorted(p.name for p in (run / "samples").glob("step_*")) == [
        "step_0000000", "step_0000001", "step_0000002", "step_0000003"
    ]
