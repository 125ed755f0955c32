"""Course assignments: student versions hold no solution, their checks fail blank and pass with the solutions,
and the masters still run as notebooks under the smoke profile."""
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nbutils import assign

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.notebooks, pytest.mark.timeout(1800)]
MASTERS = assign.masters()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("assignments")
    # the CLI path of `make assignments`; otter's own solution run is skipped here, test_solutions_pass does it
    proc = subprocess.run([sys.executable, "-m", "nbutils", "assign", "--output", str(out), "--no-run-tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _solution_lines(master: Path) -> list[str]:
    """The code lines between # BEGIN SOLUTION / # END SOLUTION in the master's solution cells."""
    nb = nbformat.read(master, as_version=4)
    lines, inside_block = [], False
    for c in nb.cells:
        if c.cell_type == "raw":
            inside_block = {"# BEGIN SOLUTION": True, "# END SOLUTION": False}.get(c.source.strip(), inside_block)
        elif c.cell_type == "code" and inside_block:
            m = re.search(r"# BEGIN SOLUTION\n(.*?)# END SOLUTION", c.source, re.S)
            lines += [l.strip() for l in (m.group(1) if m else c.source).splitlines() if len(l.strip()) > 6]
    return lines


def test_at_least_five_exercises_across_both_papers():
    qs = {m.stem: assign.questions(m) for m in MASTERS}
    assert sum(len(v) for v in qs.values()) >= 5 and len(qs) >= 5
    assert {"A1_nc1", "A2_linear_probe", "A3_cmf_head", "A4_nrc", "A5_salun_mask"} <= set(qs)


def test_student_versions_contain_no_solution_text(built):
    for master in MASTERS:
        student = built / master.stem / "student" / master.name
        text = student.read_text()
        nb = nbformat.read(student, as_version=4)
        assert "SOLUTION" not in text and not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        sol = _solution_lines(master)
        assert sol, master
        for line in sol:
            assert line not in text, (master.name, line)
        checks = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("grader.check(")]
        assert len(checks) == len(assign.questions(master))
        assert (built / master.stem / "student" / "tests").is_dir()
        assert "BEGIN SOLUTION" in (built / master.stem / "autograder" / master.name).read_text()  # instructor copy


def test_checks_fail_blank_and_pass_with_the_solutions(built, tmp_path):
    for master in MASTERS:
        student = built / master.stem / "student" / master.name
        blank = assign.check(student, parameters={"profile": "smoke"})
        assert blank["results"] and not any(blank["results"].values()), (master.name, blank)
        # put the master's solutions back into the answer cells of the student version
        snb = nbformat.read(student, as_version=4)
        inb = nbformat.read(built / master.stem / "autograder" / master.name, as_version=4)
        assert len(snb.cells) == len(inb.cells)
        for s, i in zip(snb.cells, inb.cells):
            if "otter_answer_cell" in s.metadata.get("tags", []):
                s.source = i.source
        solved = student.with_name(master.stem + "-solved.ipynb")
        nbformat.write(snb, solved)
        got = assign.check(solved, parameters={"profile": "smoke"})
        assert got["results"] and all(got["results"].values()), (master.name, got)


def test_masters_run_under_smoke(tmp_path):
    import papermill as pm

    for master in MASTERS:
        pm.execute_notebook(str(master), str(tmp_path / master.name), parameters={"profile": "smoke"},
                            cwd=str(master.parent), kernel_name="python3", progress_bar=False)


def test_masters_follow_the_skeleton():
    for master in MASTERS:
        nb = nbformat.read(master, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "What to notice" in text and "Exercises" in text and "| `smoke` |" in text, master
        assert nb.cells[0].cell_type == "raw" and nb.cells[0].source.startswith("# ASSIGNMENT CONFIG")
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_select_rejects_unknown_names():
    assert [p.stem for p in assign.select(MASTERS, "A1,A4_nrc")] == ["A1_nc1", "A4_nrc"]
    with pytest.raises(ValueError, match="unknown assignment"):
        assign.select(MASTERS, ["A9"])
