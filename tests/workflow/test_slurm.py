"""The tiny workflow on a real one-node SLURM cluster through profiles/slurm, checked against SLURM's own records.

Starts munged, slurmctld and slurmd with tests/workflow/cluster/local_slurm.sh (root; installs Debian's packages if needed).
Takes ~4 minutes: every SLURM job starts its own Snakemake, and Snakemake polls squeue every 2-14 s.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, SNAKEMAKE, snakemake, tiny_config

from mmhealth.core.pseudonym import load_or_create_salt
from mmhealth.demo.data import generate_demo

pytestmark = pytest.mark.slurm

CLUSTER_SCRIPT = REPO / "tests" / "workflow" / "cluster" / "local_slurm.sh"
PROFILE = REPO / "profiles" / "slurm"
STATE = Path(os.environ.get("MMHEALTH_SLURM_STATE", "/tmp/mmhealth-slurm"))
# Two tasks, two ingest jobs, no DICOM. finding_note guards the text vocabulary's determinism
# (tokenizers' own WordPiece trainer differs per process: huggingface/tokenizers#1794).
TINY_TASKS = ("variant_dna", "finding_note")
# The profile's first status check comes after 10 s; 2 s keeps this test's 14 short jobs from idling.
SLURM_ARGS = ("--profile", str(PROFILE), "--slurm-init-seconds-before-status-checks", "2")
RUN_TIMEOUT_S = 600


@dataclass
class SlurmRun:
    """What one Snakemake run submitted: its run id (the SLURM job name) and each job's rule and wildcards."""

    run_id: str
    jobs: dict[str, tuple[str, str]]  # SLURM job id -> (rule, wildcards as in the SLURM log path)
    output: str


def parse_slurm_run(output: str) -> SlurmRun:
    """Read the run id and every submission from the Snakemake log of a SLURM run."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    assert run_id, f"no SLURM run id in the Snakemake log:\n{output[-3000:]}"
    jobs = {}
    for job_id, log in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.?$", output, re.M):
        parts = Path(log).parts
        at = parts.index("slurm_logs")
        jobs[job_id] = (parts[at + 1].removeprefix("rule_"), "/".join(parts[at + 2:-1]))
    return SlurmRun(run_id.group(1), jobs, output)


def completion_records(run_id: str) -> dict[str, str]:
    """SLURM job id -> final state, from the cluster's job completion file, for the jobs of one run."""
    states = {}
    for line in (STATE / "jobcomp.txt").read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("Name") == run_id:
            states[fields["JobId"]] = fields["JobState"]
    return states


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table Snakemake prints before running."""
    counts = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        if not line.strip():
            break
        rule, count = line.split()
        if rule != "total":
            counts[rule] = int(count)
    return counts


def rules_without_jobs() -> set[str]:
    """Rules Snakemake runs itself: `localrule: True`, or no action at all (pure targets such as `all`)."""
    local = set()
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for block in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            has_action = re.search(r"^\s+(shell|script|run|wrapper|notebook):", block, re.M)
            if re.search(r"^\s+localrule:\s*True", block, re.M) or not has_action:
                local.add(name)
    return local


def profile_partitions() -> list[str]:
    """Every partition profiles/slurm asks for, the default first: the local cluster must have them all."""
    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    names = [profile["default-resources"]["slurm_partition"]]
    names += [r["slurm_partition"] for r in profile.get("set-resources", {}).values() if "slurm_partition" in r]
    return list(dict.fromkeys(map(str, names)))


def cluster_unavailable() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to run the SLURM daemons (tests/workflow/cluster/local_slurm.sh)"
    if shutil.which("slurmctld") and shutil.which("munged"):
        return None
    if not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    probe = subprocess.run(["apt-cache", "show", "slurmctld"], capture_output=True, timeout=60)
    if probe.returncode:
        return "SLURM is not installed and apt knows no slurmctld package (no package lists?)"
    return None


def cluster_script(command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMHEALTH_SLURM_STATE": str(STATE), "MMHEALTH_SLURM_PARTITIONS": " ".join(profile_partitions())}
    return subprocess.run(["bash", str(CLUSTER_SCRIPT), command], capture_output=True, text=True, env=env,
                          timeout=600)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="module")
def cluster():
    """A running local cluster, shared by concurrent test sessions; the last one out stops it if tests started it."""
    reason = cluster_unavailable()
    if reason:
        pytest.skip(reason)
    users = STATE / "test-sessions"
    users.mkdir(parents=True, exist_ok=True)
    me = users / str(os.getpid())
    me.touch()
    started = cluster_script("start")
    if "not ours" in started.stderr:
        me.unlink()
        pytest.skip(f"this machine has its own SLURM config: {started.stderr.strip()}")
    if started.returncode:
        logs = "\n".join(p.read_text()[-2000:] for p in (STATE / "log").glob("*.log"))
        pytest.fail(f"local SLURM cluster did not start:\n{started.stderr}\n{logs}")
    started_by_tests = STATE / "started-by-tests"  # absent when someone started the cluster by hand
    if "already running" not in started.stderr:
        started_by_tests.touch()
    yield
    me.unlink(missing_ok=True)
    others = [p for p in users.iterdir() if _pid_alive(int(p.name))]
    if started_by_tests.exists() and not others:
        started_by_tests.unlink()
        cluster_script("stop")


@dataclass
class Runs:
    local: Path
    slurm: Path
    submitted: SlurmRun
    wall_s: float


def write_tiny_workdir(work: Path, raw: Path, salt: Path) -> Path:
    """A workdir for the tiny DNA + EHR config; runs share the raw data and the pseudonym key."""
    config = tiny_config(raw)
    config["inputs"].update(dicom=None)
    config["tasks"] = {task: config["tasks"][task] for task in TINY_TASKS}
    used = {m for task in TINY_TASKS for m in config["tasks"][task]["modalities"]}
    config["pretrain"] = {m: spec for m, spec in config["pretrain"].items() if m in used}
    config.update(shards=1)
    config["privacy"]["salt_file"] = str(salt)
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return work


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> Runs:
    """The same tiny config run locally and through SLURM (concurrently: the SLURM run mostly waits on polls)."""
    base = tmp_path_factory.mktemp("slurm")
    generate_demo(base / "raw", n_subjects=24, seed=1, image_size=16, slices=(4, 6))
    load_or_create_salt(base / "salt")  # one key: both runs pseudonymise, and so split, subjects alike
    local = write_tiny_workdir(base / "local", base / "raw", base / "salt")
    slurm = write_tiny_workdir(base / "slurm", base / "raw", base / "salt")
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_run = pool.submit(snakemake, local, "--cores", "2", "--configfile", str(local / "config.yaml"))
        start = time.monotonic()
        done = snakemake(slurm, *SLURM_ARGS, "--configfile", str(slurm / "config.yaml"))
        wall_s = time.monotonic() - start
        local_run.result()
    return Runs(local, slurm, parse_slurm_run(done.stdout + done.stderr), wall_s)


def test_every_job_ran_through_sbatch_and_completed(runs):
    counts = job_counts(runs.submitted.output)
    local = rules_without_jobs()
    submitted_per_rule: dict[str, int] = {}
    for rule, _ in runs.submitted.jobs.values():
        submitted_per_rule[rule] = submitted_per_rule.get(rule, 0) + 1
    expected = {rule: n for rule, n in counts.items() if rule not in local}
    assert {"finetune", "evaluate_task", "tokenize_shard", "ingest_ehr"} <= set(expected)
    assert submitted_per_rule == expected
    # SLURM's own records: every submitted job finished COMPLETED, and the run started no job we did not see.
    assert completion_records(runs.submitted.run_id) == dict.fromkeys(runs.submitted.jobs, "COMPLETED")


def test_finetune_asked_slurm_for_a_gpu(runs):
    finetune_ids = [job for job, (rule, _) in runs.submitted.jobs.items() if rule == "finetune"]
    assert len(finetune_ids) == len(TINY_TASKS)
    calls = subprocess.run(["scontrol", "show", "job", *finetune_ids[:1]], capture_output=True, text=True,
                           timeout=30).stdout
    assert re.search(r"TresPerJob=\S*gres(/|:)gpu[:=]1", calls), calls  # from `sbatch --gpus=1`


def read_metrics(work: Path, task: str) -> dict:
    return json.loads((work / "results" / "eval" / task / "metrics.json").read_text())


def _assert_close(slurm, local, where: str) -> None:
    if isinstance(local, dict):
        assert slurm.keys() == local.keys(), where
        for key in local:
            _assert_close(slurm[key], local[key], f"{where}.{key}")
    elif isinstance(local, list):
        assert len(slurm) == len(local), where
        for i, (a, b) in enumerate(zip(slurm, local, strict=True)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(local, float):  # float32 training: reduction order differs between processes at ~1e-6
        assert math.isclose(slurm, local, rel_tol=1e-4, abs_tol=1e-7), f"{where}: {slurm} != {local}"
    else:
        assert slurm == local, where


def test_metrics_match_a_local_run(runs):
    for task in TINY_TASKS:
        slurm = read_metrics(runs.slurm, task)
        local = read_metrics(runs.local, task)
        assert slurm["n_test"] > 0
        _assert_close(slurm, local, task)
    assert (runs.slurm / "results" / "report.html").stat().st_size > 1000
    print(f"SLURM run wall time: {runs.wall_s:.0f} s for {len(runs.submitted.jobs)} jobs")


def _queue_of(run_id: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING",
                          "--name", run_id, "--format=%i"], capture_output=True, text=True, timeout=30).stdout
    return out.split()


def _cancel_first_running(rule: str, work: Path, process: subprocess.Popen, log: Path, timeout_s: float) -> str:
    """scancel the first RUNNING job of `rule` run in `work`; return its comment (rule_<rule>_wildcards_<...>)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        queue = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%i|%Z|%k"],
                               capture_output=True, text=True, timeout=30).stdout
        for line in queue.splitlines():
            job_id, workdir, comment = line.split("|", 2)
            if Path(workdir) == work.resolve() and comment.startswith(f"rule_{rule}"):  # never another session's job
                subprocess.run(["scancel", job_id], check=True, timeout=30)
                return comment
        time.sleep(0.5)
    pytest.fail(f"no {rule} job ran within {timeout_s} s:\n{log.read_text()[-4000:]}")


def test_cancelled_job_fails_the_run_and_a_rerun_finishes_the_rest(runs, tmp_path):
    work = tmp_path / "cancel"
    shutil.copytree(runs.slurm, work, symlinks=True)
    # As if the run had stopped after tokenising: both tasks train again. (--forcerun would keep the old model of a
    # job cancelled before it starts, and Snakemake does not rebuild a missing model under up-to-date metrics.)
    for done_stage in ("models", "eval"):
        shutil.rmtree(work / "results" / done_stage)
    (work / "results" / "report.html").unlink()
    # Without retries the cancelled job fails the run instead of being resubmitted.
    cmd = [*SNAKEMAKE, "--directory", str(work), *SLURM_ARGS, "--configfile", str(work / "config.yaml"),
           "--retries", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "cancelled_run.log"  # a file, not a pipe: nobody reads a pipe while we watch the queue
    with log.open("w") as sink, subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env) as process:
        try:
            cancelled = _cancel_first_running("finetune", work, process, log, timeout_s=300)
            process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:  # a hang must not outlive the test; SIGTERM lets Snakemake scancel its jobs
                process.terminate()
                process.wait(timeout=60)
    output = log.read_text()
    first = parse_slurm_run(output)
    assert process.returncode != 0
    assert "CANCELLED" in output
    assert not _queue_of(first.run_id), "the failed run left jobs in the queue"
    states = completion_records(first.run_id)
    assert set(states) == set(first.jobs)
    finished = {first.jobs[job] for job, state in states.items() if state == "COMPLETED"}
    task = cancelled.removeprefix("rule_finetune_wildcards_")
    assert ("finetune", task) not in finished and finished, states  # the other task's training finished

    done = snakemake(work, *SLURM_ARGS, "--configfile", str(work / "config.yaml"))
    second = parse_slurm_run(done.stdout + done.stderr)
    redone = set(second.jobs.values())
    assert ("finetune", task) in redone
    assert not redone & finished, f"re-ran finished jobs: {redone & finished}"
    assert {rule for rule, _ in redone} == {"finetune", "evaluate_task", "task_report", "summary_report"}
    assert set(completion_records(second.run_id).values()) == {"COMPLETED"}
    for task_name in TINY_TASKS:
        _assert_close(read_metrics(work, task_name), read_metrics(runs.local, task_name), task_name)
