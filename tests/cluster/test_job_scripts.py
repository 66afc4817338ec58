"""The job scripts under examples/cluster/: syntax, and the commands they issue.

FAULT INJECTION, not a SLURM run: fake ``srun``/``scontrol`` (and, for the programs the SLURM
steps would start, fake ``ray``/``radio``/``python``) are put first on PATH. They log their
arguments; the fake ``srun`` plays the job step's outcome the test asks for (the stage finishes,
or the trainers stop on SIGUSR1 before the end). The real ``radio featurize --address`` and
two-node ``torchrun`` paths run in test_ray_cluster.py and test_torchrun_nodes.py.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "examples" / "cluster"
NODES = ["node-a", "node-b", "node-c"]

_SRUN = r"""#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
args=("$@")
while [[ ${args[0]} == -* ]]; do   # drop srun's own options: what follows is the step's command
    case ${args[0]} in -w) args=("${args[@]:2}") ;; *) args=("${args[@]:1}") ;; esac
done
case "${args[*]}" in
    "hostname --ip-address") echo "10.1.2.3 fd00::3" ;;
    "ray start"*) echo "pid $$ ${args[*]}" >> "$FAKE_LOG"; exec sleep 300 ;;
    torchrun*)
        out=$(for ((i = 0; i < ${#args[@]}; i++)); do [[ ${args[i]} == --out ]] && echo "${args[i+1]}"; done)
        stage=$(for ((i = 0; i < ${#args[@]}; i++)); do [[ ${args[i]} == --stage ]] && echo "${args[i+1]}"; done)
        if [[ $FAKE_OUTCOME == finish ]]; then
            mkdir -p "$out/stage$stage" && touch "$out/stage$stage/final.safetensors"
        else
            exit 1   # torchrun after forwarding SIGUSR1: trainers checkpointed, the agent reports the signal
        fi ;;
    *) echo "unexpected step: ${args[*]}" >&2; exit 99 ;;
esac
"""
_SCONTROL = r"""#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG"
case "$1 $2" in
    "show hostnames") printf '%s\n' $FAKE_NODES ;;
    "requeue "*) ;;
    *) exit 99 ;;
esac
"""
_LOGGER = r"""#!/usr/bin/env bash
echo "$(basename "$0") $* RAY_ADDRESS=${RAY_ADDRESS-unset}" >> "$FAKE_LOG"
[[ $# -gt 0 && $1 == - ]] && cat > /dev/null   # python - ... <<heredoc
exit 0
"""


def _bin(tmp_path: Path, **scripts: str) -> Path:
    b = tmp_path / "bin"
    b.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (b / name).write_text(text)
        (b / name).chmod((b / name).stat().st_mode | stat.S_IXUSR)
    return b


def _run(script: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "log"
    log.write_text("")
    fake = _bin(tmp_path, srun=_SRUN, scontrol=_SCONTROL, radio=_LOGGER, python=_LOGGER, ray=_LOGGER)
    full = (
        os.environ
        | {
            "PATH": f"{fake}:{os.environ['PATH']}",
            "FAKE_LOG": str(log),
            "FAKE_NODES": " ".join(NODES),
            "SLURM_JOB_ID": "1234",
            "SLURM_JOB_NODELIST": "node-[a-c]",
            "SLURM_CPUS_PER_TASK": "16",
            "RADIO_ENV": str(tmp_path / "env"),
            "RAY_ADDRESS": "10.9.9.9:6379",
        }
        | env
    )
    proc = subprocess.run(["bash", str(SCRIPTS / script)], capture_output=True, text=True, env=full, timeout=120)
    return proc, log.read_text().splitlines()


@pytest.mark.parametrize("script", ["featurize.sbatch", "distill.sbatch", "ray_job.sh"])
def test_scripts_parse_and_say_what_to_edit(script):
    assert subprocess.run(["bash", "-n", str(SCRIPTS / script)]).returncode == 0
    text = (SCRIPTS / script).read_text()
    assert "EDIT" in text and os.access(SCRIPTS / script, os.X_OK)


def test_featurize_sbatch_starts_one_ray_head_workers_on_the_other_nodes_and_attaches(tmp_path):
    proc, log = _run("featurize.sbatch", tmp_path, STORE="/shared/s.zarr", TEACHER="sam")
    assert proc.returncode == 0, proc.stderr
    starts = [line for line in log if line.startswith("srun") and " ray start " in line]
    assert len(starts) == len(NODES)
    head = [s for s in starts if "--head" in s]
    assert len(head) == 1 and "-w node-a " in head[0] and "--port=6379" in head[0] and "--block" in head[0]
    for node in NODES[1:]:
        (w,) = [s for s in starts if f"-w {node} " in s]
        assert "--address=10.1.2.3:6379" in w and "--head" not in w and "--block" in w
    # The driver and the wait attach to the job's own cluster, never to RAY_ADDRESS from outside.
    (wait,) = [line for line in log if line.startswith("python - ")]
    assert wait.startswith(f"python - 10.1.2.3:6379 {len(NODES)} RAY_ADDRESS=unset")
    radio = [line for line in log if line.startswith("radio ")]
    assert radio == [
        "radio featurize --config pipelines.yaml --pipeline radio-amp-l --store /shared/s.zarr --teacher sam "
        "--address 10.1.2.3:6379 RAY_ADDRESS=unset",
        "radio store verify /shared/s.zarr RAY_ADDRESS=unset",
    ]
    # The Ray steps are ended with the job: no fake raylet is left running.
    for pid in (int(line.split()[1]) for line in log if line.startswith("pid ")):
        assert not Path(f"/proc/{pid}").exists() or "sleep" not in Path(f"/proc/{pid}/cmdline").read_text()


def _torchrun_args(log: list[str]) -> list[str]:
    (line,) = [entry for entry in log if entry.startswith("srun") and "torchrun" in entry]
    return shlex.split(line)


def test_distill_sbatch_finished_stage_is_not_requeued(tmp_path):
    proc, log = _run(
        "distill.sbatch", tmp_path, FAKE_OUTCOME="finish", RUN=str(tmp_path / "run"), STAGE="2", GPUS_PER_NODE="4"
    )
    assert proc.returncode == 0, proc.stderr
    args = _torchrun_args(log)
    assert args[:5] == ["srun", "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "torchrun"]
    for a in (
        "--nnodes=3",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node-a:29500",
        "--rdzv-id=radio-1234",
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
    ):
        assert a in args, a
    i = args.index("-m")
    assert args[i + 1 : i + 3] == ["radio.cli", "distill"] and args[args.index("--stage") + 1] == "2"
    assert not any(line.startswith("scontrol requeue") for line in log)


def test_distill_sbatch_requeues_a_stage_stopped_by_the_signal(tmp_path):
    text = (SCRIPTS / "distill.sbatch").read_text()
    assert "#SBATCH --signal=USR1@120" in text and "#SBATCH --requeue" in text
    proc, log = _run("distill.sbatch", tmp_path, FAKE_OUTCOME="signal", RUN=str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert log[-1] == "scontrol requeue 1234"
    # ... but not for ever: after MAX_REQUEUES restarts it fails instead.
    proc, log = _run(
        "distill.sbatch", tmp_path, FAKE_OUTCOME="signal", RUN=str(tmp_path / "run"), SLURM_RESTART_COUNT="20"
    )
    assert proc.returncode == 1 and not any(line.startswith("scontrol requeue") for line in log)
    assert proc.stderr.strip() == "stage 1 not finished after 20 requeues (last exit 1)"


@pytest.mark.slow
def test_ray_job_ships_the_built_wheel_and_installs_it_without_deps(tmp_path):
    seen = tmp_path / "seen"
    ray = f"""#!/usr/bin/env bash
{{ printf ray; printf ' %q' "$@"; echo; }} >> "$FAKE_LOG"
env_json=$(for ((i = 1; i <= $#; i++)); do [[ ${{!i}} == --runtime-env-json ]] && j=$((i + 1)) && echo "${{!j}}"; done)
wd=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["working_dir"])' "$env_json")
ls "$wd" > {seen}
"""
    log = tmp_path / "log"
    fake = _bin(tmp_path, ray=ray)
    env = os.environ | {"PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}", "FAKE_LOG": str(log)}
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "ray_job.sh"), "http://head:8265", "--pipeline", "tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    args = shlex.split(log.read_text().strip())
    assert args[:4] == ["ray", "job", "submit", "--address"] and args[4] == "http://head:8265"
    renv = json.loads(args[args.index("--runtime-env-json") + 1])
    assert args[args.index("--") + 1 :] == ["radio", "featurize", "--config", "pipelines.yaml", "--pipeline", "tiny"]
    (wheel,) = [f for f in seen.read_text().split() if f.endswith(".whl")]
    assert "pipelines.yaml" in seen.read_text().split() and wheel.startswith("radio_train-")
    assert renv["pip"]["packages"] == ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}/" + wheel]
    assert "--no-deps" in renv["pip"]["pip_install_options"]
