"""Every GPU path of a run, once and briefly, side by side: the first thing to run on a GPU machine (bench/gpu_checks.sh
smoke), so that a crash meets us before it meets a user.

    python bench/smoke.py --device cuda                  # all paths at once, on the one GPU (about 3 minutes)
    python bench/smoke.py --device cuda --only gradual,export
    python bench/smoke.py --device cpu                   # the same commands on this CPU: a dry run of the logic

Each path is a real ``run.py`` (or pytest) process with its own log; all start together, each under ``--timeout``.
A run stops at its own first error; the table then names every path that failed, with the end of its log, and the
script exits 1. Runs are short (2 epochs of 4,096 images, Q = 1 epoch, a 2,000-image test split): enough to cross
β = 1, the blend, β = 0 and the originals dropped, so each CUDA graph is captured. Their accuracies only show that
training moved (not the streamed path's: random crops of generated patterns, near chance); the accuracy checks are
gpu_checks.sh's precision and graph_precision parts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
# the generated JPEG folder that streamed runs are timed on
from stream_speed import generate

SHORT = ["train.epochs=2", "vcon.epochs=1", "train.epoch_size=4096", "data.test_size=2000", "train.cuda_graph=auto",
         "tracking.wandb.mode=disabled"]


@dataclass(frozen=True)
class Run:
    """A path that is a run.py process: its overrides after SHORT (without data=, it reads Fashion-MNIST), and what
    it must show beyond exiting well."""

    overrides: tuple[str, ...] = ()
    captures: bool = True  # on CUDA, CUDA graphs captured (train.cuda_graph=auto); False: none may be
    jpegs: bool = False  # reads the generated JPEG folder, "{jpegs}" in its overrides
    interrupt_after: str | None = None  # SIGTERM once its log says this, then the same command again: must resume
    exports: bool = False  # must write its export


RUNS = {
    "default": Run(),  # VCON pruning 90 %, compiled, captured, bf16
    "gradual": Run(("method=gradual",), captures=False),  # its shapes change every step
    "recipe": Run(("compression=recipe-attention-binary-mlp-lrd", "compression.groups.mlp.rank=8")),
    "lrd-teacher": Run(("compression=lrd", "compression.rank=8", "distill=logits")),  # the teacher inside the graph
    "bert-compiled": Run(("model=bert-micro", "data=rotten-tomatoes", "train.compile=true", "train.epoch_size=2048"),
                         captures=False),  # text: a new sequence length in most batches
    "streamed": Run(("data=imagefolder", "data.path={jpegs}", "data.stream=true", "data.workers=4",
                     "data.image_size=64", "data.val_size=100", "data.test_size=null"), jpegs=True),
    "export": Run(("export=true",), exports=True),
    "resume": Run(("train.epochs=3",), interrupt_after="epoch 1/3"),
}
TESTS = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda_graph.py"]  # the one path that is no run


def command(name: str, device: str, fashion_mnist: str, jpegs: Path, outputs: Path) -> list[str]:
    if name == "tests":
        return [sys.executable, *TESTS]
    extra = [o.format(jpegs=jpegs) for o in RUNS[name].overrides]
    data_root = [] if any(o.startswith("data=") for o in extra) else [f"data.root={fashion_mnist}"]
    return [sys.executable, "run.py", *SHORT, *data_root, *extra, f"device={device}", f"outputs={outputs / name}"]


def start(name: str, cmd: list[str], logs: Path, env: dict) -> subprocess.Popen:
    with open(logs / f"{name}.log", "a") as log:  # the child keeps its own copy of the file
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def interrupt_when_logged(proc: subprocess.Popen, log: Path, text: str, deadline: float) -> bool:
    """SIGTERM ``proc`` once ``log`` holds ``text`` (a run then checkpoints and leaves); False if it ended first."""
    while proc.poll() is None and time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            proc.send_signal(signal.SIGTERM)
            proc.wait(max(1.0, deadline - time.monotonic()))
            return True
        time.sleep(0.5)
    return False


def finish(name: str, cmd: list[str], logs: Path, env: dict, deadline: float, jpegs: Path) -> tuple[int | None, float]:
    """Run a path to its end (its JPEG folder generated first, where it reads one; stopped and run again, where it
    is interrupted); its exit code (None on timeout) and seconds."""
    began, run = time.monotonic(), RUNS.get(name)
    if run and run.jpegs:
        generate(jpegs, 1000)  # 100 a class in train/, 10 in val/ (the test split); kept for the next call
    proc = start(name, cmd, logs, env)
    try:
        if run and run.interrupt_after and interrupt_when_logged(proc, logs / f"{name}.log", run.interrupt_after,
                                                                 deadline):
            proc = start(name, cmd, logs, env)
        return proc.wait(max(1.0, deadline - time.monotonic())), time.monotonic() - began
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return None, time.monotonic() - began


def row(name: str, rc: int | None, seconds: float, log: Path, outputs: Path, device: str) -> dict:
    """What a path did: its status, and for a run its results.json's figures and what its log says it used. A run
    that exits well but did not do what its path is for (on CUDA: compile, capture graphs; resume; export) fails."""
    text = log.read_text(errors="replace")
    r = {"path": name, "status": "ran" if rc == 0 else ("timed out" if rc is None else f"failed (exit {rc})"),
         "seconds": round(seconds)}
    if name == "tests":
        summary = text.strip().splitlines()[-1] if text.strip() else ""  # pytest's last line
        if rc == 0 and device == "cuda" and "skipped" in summary:
            r["status"] = "failed (GPU tests skipped)"
        return r | {"note": summary}
    found = sorted((outputs / name).glob("runs/*/results.json"))
    if found:
        res = json.loads(found[-1].read_text())
        r |= {"test_acc": round(res["test_acc"], 2), "dense_test_acc": round(res["dense_test_acc"], 2),
              "images_per_s": round(res["history"][-1]["images_per_s"]), "cuda_graphs": res.get("cuda_graphs"),
              "device": res["device"]}
    r["compiled"] = "blocks with torch.compile" in text
    run, wrong = RUNS[name], []
    if rc == 0 and device == "cuda":
        if not r["compiled"]:
            wrong.append("not compiled")
        if (r.get("cuda_graphs") == 0) == run.captures:
            wrong.append(f"{r.get('cuda_graphs')} CUDA graphs captured")
    if rc == 0 and run.interrupt_after and "resumed " not in text:
        wrong.append("not resumed")
    if rc == 0 and run.exports and not (found and "export" in res):
        wrong.append("nothing exported")
    if wrong:
        r["status"] = "failed (" + ", ".join(wrong) + ")"
    elif run.interrupt_after:
        r["note"] = f"stopped by SIGTERM after '{run.interrupt_after}', resumed"
    elif run.exports:
        r["note"] = "exported"
    return r


def table(rows: list[dict]) -> str:
    keys = ["path", "status", "seconds", "test_acc", "dense_test_acc", "images_per_s", "cuda_graphs", "compiled",
            "device", "note"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", default=",".join(["tests", *RUNS]), help="comma-separated paths (default: all)")
    parser.add_argument("--fashion-mnist", default=os.environ.get("VCON_FASHION_MNIST",
                                                                  "/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--timeout", type=float, default=240, help="seconds each path may take")
    parser.add_argument("--work", default="/tmp/vcon-smoke", help="runs, logs and the JPEG folder (emptied first)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = sorted(set(names) - {"tests", *RUNS})
    if unknown:
        parser.error(f"--only: unknown paths {unknown}; allowed: {', '.join(['tests', *RUNS])}")

    work = Path(args.work)
    shutil.rmtree(work / "runs", ignore_errors=True)
    shutil.rmtree(work / "logs", ignore_errors=True)
    outputs, logs, jpegs = work / "runs", work / "logs", work / "jpegs"
    logs.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "VCON_FASHION_MNIST":
           args.fashion_mnist}
    cmds = {n: command(n, args.device, args.fashion_mnist, jpegs, outputs) for n in names}
    deadline = time.monotonic() + args.timeout
    print(f"smoke: {len(cmds)} paths started on {args.device}, at most {args.timeout:.0f} s each", flush=True)
    with ThreadPoolExecutor(len(cmds)) as pool:  # side by side: one thread waits on each path
        ends = {n: pool.submit(finish, n, cmd, logs, env, deadline, jpegs) for n, cmd in cmds.items()}
        rows = []
        for n, end in ends.items():
            rows.append(row(n, *end.result(), logs / f"{n}.log", outputs, args.device))
            print(f"  {n}: {rows[-1]['status']} ({rows[-1]['seconds']} s)", flush=True)

    failed = [r["path"] for r in rows if r["status"] != "ran"]
    print(table(rows))
    for n in failed:
        print(f"\n--- {n}: {' '.join(cmds[n])}\n" + "\n".join((logs / f"{n}.log").read_text(errors="replace")
                                                                .splitlines()[-40:]))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (Path(args.out) / f"smoke-{args.device}-{stamp}.json").write_text(json.dumps(rows, indent=1))
    print(f"\nsmoke: {len(rows) - len(failed)} of {len(rows)} paths ran" + (f"; failed: {', '.join(failed)}"
                                                                             if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
