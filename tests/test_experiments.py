"""DVC's own experiment tools on the real pipeline (tiny params, a temporary git repo): main's
metrics are readable by `dvc exp show`, a queued two-value grid runs through `dvc queue start`,
and pipeline.experiments reads both results back through DVC."""
import json
import subprocess
import time

import pytest

from tests.test_pipeline_dvc import _run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(reproduced_git_project, tmp_path_factory):
    from tests.conftest import copy_git_project

    return copy_git_project(reproduced_git_project[0], tmp_path_factory.mktemp("exps"))


def _wait_for_queue(proj, env, timeout=420):
    """Until `dvc queue status` lists nothing queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _run(["dvc", "queue", "status"], proj, env)
        if not any(w in status for w in ("Queued", "Running")):
            return status
        time.sleep(3)
    subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=proj, env=env)
    pytest.fail(f"the queue did not finish in {timeout} s:\n{status}")


def test_main_metrics_are_readable_without_generated_files_in_git(project):
    proj, env = project
    tracked = _run(["git", "ls-files"], proj, env).split()
    assert not [f for f in tracked if f.startswith(("metrics/", "runs/", "data/", "models/"))]
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], proj, env))
    text = json.dumps(shown)
    assert "evaluate.json" in text and '"drm"' in text
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], proj, env))))
    base = [r for r in rows if r.get("typ") == "baseline"]
    assert base, rows
    float(base[0]["drm.ood_test.dual"])  # DVC shows `!` for a metric it could not read


def test_a_queued_grid_runs_and_reads_back_through_dvc(project):
    from pipeline.experiments import experiments, select

    proj, env = project
    _run(["dvc", "exp", "run", "--queue", "-S", "++methods.drm.lam=1,3"], proj, env)
    _run(["dvc", "queue", "start", "-j", "1"], proj, env)
    status = _wait_for_queue(proj, env)
    assert "Failed" not in status, status
    rows = experiments(str(proj))
    lams = sorted(r["params"].get("methods.drm.lam") for r in rows if r["name"] != rows[0]["name"])
    assert [1, 3] == [lam for lam in lams if lam in (1, 3)], rows
    by_lam = {r["params"].get("methods.drm.lam"): r for r in rows}
    assert by_lam[1]["metrics"]["drm.ood_val.dual"] != by_lam[3]["metrics"]["drm.ood_val.dual"] or \
        by_lam[1]["rev"] != by_lam[3]["rev"]
    # ERM is untouched by lambda: DVC restored it, the same numbers in every experiment
    assert len({r["metrics"]["erm.ood_test.dual"] for r in rows}) == 1
    table, chosen = select(rows, method="drm", param="methods.drm.lam")
    assert len(table) == len(rows) and chosen in table
    # DVC's own diff between two experiments sees the changed param
    names = [r["name"] for r in rows if r["params"].get("methods.drm.lam") in (1, 3)]
    diff = _run(["dvc", "params", "diff", names[0], names[1], "--json"], proj, env)
    assert "methods.drm.lam" in diff
