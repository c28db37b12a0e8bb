"""The example notebook runs end to end (quick size: tiny preset, espeak-ng donor) and plays audio."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "cadence_transplant.ipynb"


@pytest.mark.slow
def test_cadence_notebook_executes_and_plays_before_and_after(tmp_path: Path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="executing the notebook needs nbformat (dev extra)")
    nbclient = pytest.importorskip("nbclient", reason="executing the notebook needs nbclient (dev extra)")
    pytest.importorskip("ipykernel", reason="executing the notebook needs ipykernel (dev extra)")
    if shutil.which("espeak-ng") is None:
        pytest.skip("the quick notebook's donor is espeak-ng speech: apt-get install espeak-ng")
    monkeypatch.setenv("VITS_SURGERY_NOTEBOOK_QUICK", "1")
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
    assert "before" in text and "after" in text
    run = tmp_path / "cadence_notebook_out" / "run"
    assert (run / "report.html").is_file()
    assert sorted(p.name for p in (run / "samples").glob("step_*")) == [
        "step_0000000", "step_0000001", "step_0000002", "step_0000003"
    ]
