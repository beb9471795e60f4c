"""Issue 21's "every case as a generator" suite: each hostile file of ``hostile_cases.every_case`` through
the real command line (one ``cacxr predict``, one ``cacxr ingest``) and the real service (one ``cacxr
serve`` on 127.0.0.1), each a child process under an address-space cap, its memory watched from outside.

The acceptance checked for every case: exit 0 (or a 4xx), one clear per-file reason (the case's), peak
memory under 1 GiB beyond the same command's on a harmless file, ``/health`` answering in under 2 s after
each upload (and while a CPU bomb is being uploaded), the user's files untouched, no traceback.

How memory is measured: each child starts its own session; a thread samples every process of that session
(the command and its decode workers) every 50 ms from /proc: the sum of their resident memory (the
*tree*), and each one's high-water mark (VmHWM); ``os.wait4`` adds the exact ``ru_maxrss`` of the child
and the workers it waited for. The baseline is the same command on one harmless file; the cap
(``RLIMIT_AS``, inherited by the workers) is that baseline's largest address space + 1 GiB, so a
regression fails the test instead of taking the machine. ``CACXR_DECODE_SECONDS`` is 15 in the
children (default 30): a CPU bomb that got past the checks costs a test 15 s, not minutes.

Time: three command children and their baselines, about 75 s on the loaded 2-core machine (marked slow).
Item 6 (slow clients) is in tests/serving; items 9 and 10 (outputs) in tests/test_hostile_outputs.py;
test_hostile.py keeps the issue-13 bombs.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import hostile_cases as hc
import hostile_files as hostile

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="memory is read from Linux's /proc"),
]

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "CACXR_DECODE_SECONDS": "15"}
MiB, GiB = 2**20, 2**30
BUDGET_MB = 1024  # peak memory allowed beyond the baseline


# --------------------------------------------------------------------------- children and their memory


class Sampler(threading.Thread):
    """Every 50 ms: the resident memory of every process in session ``sid``, summed, and each one's peak."""

    def __init__(self, sid: int) -> None:
        super().__init__(daemon=True)
        self.sid = sid
        self.tree_peak = 0  # KiB: the largest sum of VmRSS seen
        self.process_peak: dict[int, int] = {}  # pid -> VmHWM (KiB)
        self.vm_peak = 0  # KiB: the largest VmPeak (address space) of one process
        self._done = threading.Event()

    def sample(self) -> int:
        total = 0
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            with contextlib.suppress(OSError, ValueError, IndexError, KeyError):  # gone, or a zombie
                with open(f"/proc/{pid}/stat") as fp:
                    if int(fp.read().rsplit(")", 1)[1].split()[3]) != self.sid:
                        continue
                with open(f"/proc/{pid}/status") as fp:
                    status = dict(line.split(":", 1) for line in fp if ":" in line)
                total += int(status["VmRSS"].split()[0])
                hwm = int(status["VmHWM"].split()[0])
                self.process_peak[pid] = max(self.process_peak.get(pid, 0), hwm)
                self.vm_peak = max(self.vm_peak, int(status["VmPeak"].split()[0]))
        self.tree_peak = max(self.tree_peak, total)
        return total

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(0.05)

    def stop(self) -> None:
        self._done.set()
        self.join(5)


@dataclass
class Ran:
    """A finished child: exit code (None: killed at its timeout), output, memory in MB."""

    rc: int | None
    out: str
    err: str
    wall: float
    tree_mb: int  # the largest resident memory of the child and its workers together
    process_mb: int  # the largest peak of any one of them
    vm_mb: int  # the largest address space of any one of them
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"rc={self.rc} wall={self.wall:.0f}s tree={self.tree_mb}MB process={self.process_mb}MB "
                f"vm={self.vm_mb}MB\nstderr: {self.err[-3000:]}")  # fmt: skip


def _cap(as_bytes: int | None):
    def apply() -> None:
        if as_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))

    return apply


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _finish(proc: subprocess.Popen, sampler: Sampler, timeout: float) -> tuple[int | None, int]:
    """Wait for ``proc`` (SIGKILL to its session after ``timeout`` s); exit code and ``ru_maxrss`` (KiB)."""
    timer = threading.Timer(timeout, _kill_session, (proc.pid,))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timed_out = not timer.is_alive()
        timer.cancel()
        sampler.stop()
        _kill_session(proc.pid)  # a worker left behind
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (None if timed_out else proc.returncode), usage.ru_maxrss


def cacxr(
    args: list[str], as_bytes: int | None = None, timeout: float = 240, cwd: Path | None = None, **env: str
) -> Ran:
    """``python -m cacxr ARGS`` in a child process under the cap (``env``: extra variables), its memory sampled."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "cacxr", *args], stdout=out, stderr=err, env={**ENV, **env}, cwd=cwd,
                                preexec_fn=_cap(as_bytes), start_new_session=True)  # fmt: skip
        sampler = Sampler(proc.pid)
        sampler.start()
        rc, maxrss = _finish(proc, sampler, timeout)
        wall = time.monotonic() - started
        out.seek(0), err.seek(0)
        text_out, text_err = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    peak = max([maxrss, *sampler.process_peak.values()])
    return Ran(rc, text_out, text_err, wall, sampler.tree_peak // 1024, peak // 1024, sampler.vm_peak // 1024)


def assert_within_budget(ran: Ran, baseline: Ran) -> None:
    """Peak memory (the tree's and any one process's) under the baseline's + 1 GiB."""
    assert ran.tree_mb - baseline.tree_mb < BUDGET_MB, f"command and workers: {ran!r}\nbaseline: {baseline!r}"
    assert ran.process_mb - baseline.process_mb < BUDGET_MB, f"one process: {ran!r}\nbaseline: {baseline!r}"


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (what 'untouched' compares)."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fp:
        return list(csv.DictReader(fp))


def formula_cells(path: Path) -> list[str]:
    with open(path, newline="") as fp:
        return [cell for row in csv.reader(fp) for cell in row if cell.startswith(hc.FORMULA_PREFIXES)]


def reason_of(error: str) -> tuple[str, str]:
    """predict's ``error`` cell, ``"reason: detail"``, split."""
    reason, _, detail = error.partition(": ")
    return reason, detail


# ---------------------------------------------------------------------------------------- the cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[hc.Case]:
    built = list(hc.every_case(tmp_path_factory.mktemp("cases")))
    assert len({case.id for case in built}) == len(built) == len(hc.BUILDERS)
    return built


def test_the_catalogue_states_one_reason_per_case(cases: list[hc.Case]) -> None:
    from cacxr.imaging import REASONS

    items = {case.id.split("-")[0].rstrip("abcde") for case in cases}
    assert items == {"1", "2", "3", "4", "5", "7", "8", "11", "12"}  # 13 is built inside the ingest cohort
    for case in cases:
        assert case.reason in (*REASONS, ""), case
        assert case.path.is_file() and case.path.stat().st_size < 10 * MiB, case
    assert sum(case.corrupt for case in cases) == 3


# ------------------------------------------------------------------------------------- cacxr predict


@pytest.fixture(scope="module")
def predict_baseline(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Ran:
    folder = tmp_path_factory.mktemp("predict_baseline")
    image = hostile.native_dicom(folder / "ok.dcm")
    ran = cacxr(
        ["predict", str(run_dir), str(image), "--out", str(folder / "p.csv"), "--no-progress"], 8 * GiB
    )
    assert ran.rc == 0, ran
    return ran


@pytest.fixture(scope="module")
def predicted(
    run_dir: Path, cases: list[hc.Case], predict_baseline: Ran, tmp_path_factory: pytest.TempPathFactory
):
    """One ``cacxr predict RUN cases <formula names> --out p.csv``, from the input folder, under the cap.

    The formula-named files are given by their bare names (the working folder holds them), so their
    ``input`` cell would start with ``=``, ``+``, ``-`` or ``@`` if predict did not escape it.
    """
    root = tmp_path_factory.mktemp("predict")
    inputs = root / "in"
    inputs.mkdir()
    names: dict[str, hc.Case] = {}  # the input cell predict writes -> its case
    for case in cases:
        name = case.path.name if case.id.startswith("11") else f"cases/{case.id}/{case.path.name}"
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(case.path, inputs / name)
        names[name] = case
    hostile.native_dicom(inputs / "cases" / "control.dcm")
    before = listing(inputs)
    cap = predict_baseline.vm_mb * MiB + GiB
    formula = [name for name in names if "/" not in name]
    # "--": "-2+3.dcm" is an input, not an option
    args = ["predict", "--out", str(root / "p.csv"), "--no-progress", str(run_dir), "--", "cases", *formula]
    ran = cacxr(args, cap, cwd=inputs)
    print(f"predict, cap {cap // MiB} MB: {ran!r}\nbaseline: {predict_baseline!r}")
    ran.extra.update(names=names, out=root / "p.csv", untouched=listing(inputs) == before)
    return ran


def test_predict_survives_every_case_within_memory(predicted: Ran, predict_baseline: Ran) -> None:
    assert predicted.rc == 0, predicted
    assert "Traceback" not in predicted.err, predicted
    assert predicted.extra["untouched"], "predict changed its input folder"
    assert_within_budget(predicted, predict_baseline)


def test_predict_gives_each_file_its_reason(predicted: Ran) -> None:
    names: dict[str, hc.Case] = predicted.extra["names"]
    got = {row["input"].removeprefix("'"): row for row in rows(predicted.extra["out"])}
    assert set(got) == {*names, "cases/control.dcm"}, sorted(got)
    assert got["cases/control.dcm"]["probability"] and not got["cases/control.dcm"]["error"]
    wrong = []
    for name, case in names.items():
        reason, detail = reason_of(got[name]["error"])
        scored = bool(got[name]["probability"])
        if not case.matches(reason, detail) or scored != (case.reason == ""):
            wrong.append(f"{case.id}: {got[name]['error'] or 'scored'} (expected {case.reason or 'scored'})")
    assert not wrong, "\n".join(wrong)


def test_predict_prints_at_most_one_line_per_corrupt_file(predicted: Ran) -> None:
    names: dict[str, hc.Case] = predicted.extra["names"]
    lines = [line for line in predicted.err.splitlines() if line.strip()]
    for name, case in names.items():
        if case.corrupt:
            assert len([line for line in lines if Path(name).name in line]) <= 1, (case.id, predicted.err)
    # every other line is cacxr's own: its INFO log and the summary (no pydicom "ERROR ..." record)
    others = [line for line in lines if not line.startswith(("INFO cacxr", "cacxr predict: scored"))]
    assert all(any(Path(name).name in line for name in names) for line in others), others


def test_predict_escapes_formula_file_names(predicted: Ran) -> None:
    out = predicted.extra["out"]
    assert not formula_cells(out), formula_cells(out)
    escaped = [row["input"] for row in rows(out) if row["input"].startswith("'")]
    assert sorted(escaped) == sorted("'" + name for name in hc.FORMULA_NAMES)


# -------------------------------------------------------------------------------------- cacxr ingest


def _cohort(folder: Path, patients: dict[str, list[Path]], control: Path) -> Path:
    """DATA/<patient>/rx/<files> for each patient, ``control`` (a cohort patient's folder) copied as
    CAC_000 and as the formula-named patient, and labels.csv naming them all (cac_score 10)."""
    data = folder / "data"
    shutil.copytree(control, data / "CAC_000")
    shutil.copytree(control, data / hc.FORMULA_FOLDER)
    for patient, files in patients.items():
        for path in files:
            (data / patient / "rx").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, data / patient / "rx" / path.name)
    with open(folder / "labels.csv", "w", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(["patient_id", "cac_score"])
        writer.writerows([patient, 10] for patient in ["CAC_000", hc.FORMULA_FOLDER, *patients])
    return data


def _control_patient(cohort: Path) -> Path:
    return next(p for p in sorted(cohort.iterdir()) if p.is_dir() and p.name.startswith("CAC_"))


@pytest.fixture(scope="module")
def ingest_baseline(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Ran:
    folder = tmp_path_factory.mktemp("ingest_baseline")
    data = _cohort(folder, {}, _control_patient(cohort))
    ran = cacxr(["ingest", str(data), "--out", str(folder / "out"), "--labels", str(folder / "labels.csv"),
                 "--workers", "1", "--no-progress"], 8 * GiB)  # fmt: skip
    assert ran.rc == 0, ran
    return ran


@pytest.fixture(scope="module")
def ingested(
    cases: list[hc.Case], cohort: Path, ingest_baseline: Ran, tmp_path_factory: pytest.TempPathFactory
):
    """One ``cacxr ingest`` over a cohort: a patient folder per case (CAC_001...), a harmless control
    patient (CAC_000), a formula-named patient, and item 13 (a corrupt file whose PatientID is its folder)."""
    folder = tmp_path_factory.mktemp("ingest")
    by_patient = {f"CAC_{n:03d}": case for n, case in enumerate(cases, start=1)}
    item13 = f"CAC_{len(cases) + 1:03d}"
    by_patient[item13] = hc.patient_id_is_folder(folder / "made", item13)
    data = _cohort(
        folder, {patient: [case.path] for patient, case in by_patient.items()}, _control_patient(cohort)
    )
    before = listing(data)
    cap = ingest_baseline.vm_mb * MiB + GiB
    ran = cacxr(["ingest", str(data), "--out", str(folder / "out"), "--labels", str(folder / "labels.csv"),
                 "--workers", "1", "--no-progress"], cap)  # fmt: skip
    print(f"ingest, cap {cap // MiB} MB: {ran!r}\nbaseline: {ingest_baseline!r}")
    ran.extra.update(
        by_patient=by_patient, out=folder / "out", untouched=listing(data) == before, item13=item13
    )
    return ran


def test_ingest_survives_every_case_within_memory(ingested: Ran, ingest_baseline: Ran) -> None:
    assert ingested.rc == 0, ingested
    assert "Traceback" not in ingested.err, ingested
    assert ingested.extra["untouched"], "ingest changed the DATA folder"
    others = [
        line for line in ingested.err.splitlines() if line.strip() and not line.startswith("INFO cacxr")
    ]
    assert not others, others  # no pydicom "ERROR ..." record, no warning quoting a header
    assert_within_budget(ingested, ingest_baseline)


def test_ingest_gives_each_file_its_reason(ingested: Ran) -> None:
    by_patient: dict[str, hc.Case] = ingested.extra["by_patient"]
    out = ingested.extra["out"]
    excluded = {row["patient_id"]: row for row in rows(out / "excluded.csv") if row["path"]}
    kept = {row["patient_id"]: row for row in rows(out / "manifest.csv")}
    assert "CAC_000" in kept, "the harmless control was not kept"
    wrong = []
    for patient, case in by_patient.items():
        row = excluded.get(patient)
        if case.reason == "":
            if patient not in kept:
                wrong.append(f"{case.id}: not kept ({row and (row['reason'], row['detail'])})")
        elif not (
            row and Path(row["path"]).name == case.path.name and case.matches(row["reason"], row["detail"])
        ):
            wrong.append(f"{case.id}: {row and (row['reason'], row['detail'])} (expected {case.reason})")
    assert not wrong, "\n".join(wrong)


def test_ingest_detail_keeps_the_path_whole(ingested: Ran) -> None:
    """Item 13: a PatientID equal to the folder name never turns the path into <removed>."""
    out = ingested.extra["out"]
    item13 = ingested.extra["item13"]
    row = next(row for row in rows(out / "excluded.csv") if row["patient_id"] == item13 and row["path"])
    assert row["path"].endswith(f"{ingested.extra['item13']}/rx/corrupt_j2k.dcm"), row
    assert "<removed>" not in row["detail"] and row["detail"].count("cannot be decoded") == 1, row


def test_ingest_escapes_formula_cells(ingested: Ran) -> None:
    out = ingested.extra["out"]
    for name in ("manifest.csv", "excluded.csv"):
        assert not formula_cells(out / name), (name, formula_cells(out / name))


def test_ingest_matches_a_quoted_patient_id_in_the_label_table(ingested: Ran) -> None:
    """The formula-named patient's label row is a quoted CSV cell (it holds quotes and a comma)."""
    kept = {row["patient_id"].removeprefix("'") for row in rows(ingested.extra["out"] / "manifest.csv")}
    assert hc.FORMULA_FOLDER in kept, sorted(kept)


def test_ingest_header_read_the_pool_gives_up_on_costs_one_file(cohort: Path, tmp_path: Path) -> None:
    """A header read the decode pool abandons (over its time budget here; a crashed or out-of-memory worker
    alike) is that file's excluded row, not a traceback that ends the ingest."""
    data = _cohort(tmp_path, {}, _control_patient(cohort))
    args = ["ingest", str(data), "--out", str(tmp_path / "out"), "--labels", str(tmp_path / "labels.csv")]
    ran = cacxr([*args, "--workers", "1", "--no-progress"], 8 * GiB, CACXR_DECODE_SECONDS="0.001")
    assert ran.rc in (0, 2) and "Traceback" not in ran.err, ran
    excluded = [row for row in rows(tmp_path / "out" / "excluded.csv") if row["path"]]
    assert excluded and all(row["reason"] == "too_complex" for row in excluded), excluded


# ---------------------------------------------------------------------------------------- cacxr serve


class Server:
    """``cacxr serve RUN --port 0`` in its own session under a cap, its memory sampled throughout."""

    def __init__(self, run_dir: Path, log: Path, as_bytes: int) -> None:
        self.log = log
        self._fp = open(log, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "cacxr", "serve", str(run_dir), "--port", "0"],
                                     stdout=self._fp, stderr=subprocess.STDOUT, env=ENV, preexec_fn=_cap(as_bytes),
                                     start_new_session=True)  # fmt: skip
        self.sampler = Sampler(self.proc.pid)
        self.sampler.start()
        deadline = time.monotonic() + 180
        while not (found := re.search(r"open (http://127\.0\.0\.1:\d+)/", log.read_text(errors="replace"))):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        self.url = found.group(1)
        while self.health()[0] != 200:
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    def health(self, timeout: float = 2.0) -> tuple[int, float]:
        import httpx

        started = time.monotonic()
        try:
            code = httpx.get(f"{self.url}/health", timeout=timeout).status_code
        except httpx.HTTPError:
            code = 0
        return code, time.monotonic() - started

    def upload(self, path: Path, name: str = "") -> tuple[int, str]:
        import httpx

        files = {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}
        answer = httpx.post(f"{self.url}/predict", files=files, timeout=60)
        try:
            return answer.status_code, str(answer.json().get("detail", ""))
        except ValueError:
            return answer.status_code, answer.text

    def stop(self) -> Ran:
        """Ctrl-C (uvicorn's graceful stop: the decode pool is shut down), SIGKILL after 30 s."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)
        rc, maxrss = _finish(self.proc, self.sampler, 30)
        self._fp.close()
        peak = max([maxrss, *self.sampler.process_peak.values()])
        text = self.log.read_text(errors="replace")
        return Ran(
            rc, "", text, 0, self.sampler.tree_peak // 1024, peak // 1024, self.sampler.vm_peak // 1024
        )

    def snapshot(self) -> Ran:
        """The memory so far (the baseline once the server has answered a harmless upload)."""
        self.sampler.sample()
        peak = max(self.sampler.process_peak.values())
        return Ran(
            None, "", "", 0, self.sampler.tree_peak // 1024, peak // 1024, self.sampler.vm_peak // 1024
        )


def _health_while(server: Server, busy: threading.Thread) -> list[tuple[int, float]]:
    """/health polled while ``busy`` (an upload) is in flight, and once after it."""
    answers = []
    while busy.is_alive():
        answers.append(server.health())
        time.sleep(0.05)
    busy.join()
    return [*answers, server.health()]


@pytest.fixture(scope="module")
def served(
    run_dir: Path, cases: list[hc.Case], predict_baseline: Ran, tmp_path_factory: pytest.TempPathFactory
):
    """One ``cacxr serve`` child: a harmless upload (the baseline), then every case uploaded in turn with
    /health polled during and after each upload; the server is then stopped and its log read."""
    folder = tmp_path_factory.mktemp("serve")
    # Started under a loose cap (serve's own address space is not known yet), tightened to its measured
    # address space + 1 GiB once it has scored a harmless upload.
    server = Server(run_dir, folder / "serve.log", predict_baseline.vm_mb * MiB + 3 * GiB)
    try:
        control = hostile.native_dicom(folder / "control.dcm")
        status, detail = server.upload(control)
        assert status == 200, detail
        baseline = server.snapshot()
        cap = baseline.vm_mb * MiB + GiB
        resource.prlimit(server.proc.pid, resource.RLIMIT_AS, (cap, cap))
        answers = {}
        for case in cases:
            answer: dict = {}

            def post(case: hc.Case = case, answer: dict = answer) -> None:
                try:
                    answer["status"], answer["detail"] = server.upload(case.path)
                except Exception as exc:  # noqa: BLE001 - reported by the test as no answer
                    answer["status"], answer["detail"] = 0, f"{type(exc).__name__}: {exc}"

            busy = threading.Thread(target=post)
            busy.start()
            answer["health"] = _health_while(server, busy)
            answers[case.id] = answer
        after = server.health()
    finally:
        ran = server.stop()
    print(f"serve, cap {cap // MiB} MB: {ran!r}\nbaseline: {baseline!r}")
    ran.extra.update(answers=answers, baseline=baseline, after=after, control=control)
    return ran


def test_service_answers_each_case_with_its_4xx(served: Ran, cases: list[hc.Case]) -> None:
    wrong = []
    for case in cases:
        answer = served.extra["answers"][case.id]
        print(case.id, answer)
        status, detail = answer["status"], answer["detail"]
        ok = status == case.status and case.path.name in detail or case.reason == "" and status == 200
        if case.reason and case.status != 413:  # a 413's message says "above the limit" in its own words
            ok = ok and f"{case.reason}: " in detail and case.phrase in detail
        if not ok or "/tmp" in detail or str(Path(tempfile.gettempdir())) in detail:
            wrong.append(f"{case.id}: HTTP {status} {detail[:300]} (expected {case.status} {case.reason})")
    assert not wrong, "\n".join(wrong)


def test_service_health_answers_in_two_seconds_throughout(served: Ran, cases: list[hc.Case]) -> None:
    slow = {case.id: [h for h in served.extra["answers"][case.id]["health"] if h[0] != 200 or h[1] >= 2]
            for case in cases}  # fmt: skip
    assert not any(slow.values()), {k: v for k, v in slow.items() if v}
    assert served.extra["after"][0] == 200


def test_service_memory_and_log(served: Ran) -> None:
    assert "Traceback" not in served.err, served.err[-3000:]
    assert_within_budget(served, served.extra["baseline"])
