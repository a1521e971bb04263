"""The full user path on an emulated aarch64 board: probe, setup, convert on the host, bench on
the board, accuracy equal to the host's, results stored, emulation reported."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest
from conftest import ALIAS, RUN_TIMEOUT, RUNS, TARGETS, TFLRT, WARMUP, edgekit, edgekit_json

pytestmark = pytest.mark.board

RUNTIME_OF = {"tflite-int8": "ai_edge_litert", "tflite-fp16": "ai_edge_litert",
              "onnx-int8": "onnxruntime"}


def _bench(board, build, device, db, *extra):
    return edgekit_json("bench", build.folder, "--device", device, "--runs", RUNS, "--warmup",
                        WARMUP, "--eval", build.eval_npz, "--db", db, "--timeout", RUN_TIMEOUT,
                        *board.cli_connection(), *extra)


def test_the_board_is_aarch64_linux_reached_over_a_real_sshd(board):
    uname = subprocess.run(["ssh", "-F", str(board.ssh_config), "-o", "BatchMode=yes",
                            "-o", "StrictHostKeyChecking=yes", ALIAS,
                            "uname -m; cat /etc/debian_version"],
                           capture_output=True, text=True, timeout=120)
    assert uname.returncode == 0, uname.stderr
    arch, debian = uname.stdout.split()
    assert arch == "aarch64" and debian.startswith("12.")
    assert board.sshd_alive()
    mounts = [line.split()[1] for line in open("/proc/self/mounts")]
    assert {str(board.root / "proc"), str(board.root / "dev")} <= set(mounts)


def test_probe_reports_aarch64_emulation_and_no_runtime(bare_probe):
    assert bare_probe["arch"] == "aarch64"
    assert bare_probe["os"]["system"] == "Linux" and bare_probe["libc"]["name"] == "glibc"
    assert bare_probe["python"]["version"].startswith("3.11.")
    assert bare_probe["python_used"] == "python3"
    assert bare_probe["runtimes"] == []  # the board starts with no ML runtime
    emu = bare_probe["emulation"]
    assert emu["emulated"] is True and emu["emulator"] == "qemu-user"
    assert emu["host_arch"] == "x86_64" and emu["evidence"]


def test_probe_table_names_the_emulation(board):
    out = edgekit("devices", "probe", ALIAS, *board.cli_connection()).stderr
    assert "aarch64" in out and "emulated" in out and "qemu-user" in out


def test_setup_installs_aarch64_runtimes_offline_from_the_host(board, board_setup):
    wheels = board_setup["wheels"]
    assert {w.split("-")[0].lower() for w in wheels} >= {"numpy", "ai_edge_litert", "onnxruntime"}
    for w in wheels:  # every binary wheel is for the board, none for this x86_64 host
        tag = w[:-4].split("-")[-1]
        assert "x86_64" not in tag and (tag == "any" or "aarch64" in tag), w
    assert board_setup["upload_bytes"] > 10_000_000
    assert {r["name"] for r in board_setup["runtimes"]} == {"ai_edge_litert", "onnxruntime"}
    venv_py = board_setup["python"]
    assert venv_py == "/root/.cache/edgekit/venv/bin/python"
    assert (board.root / venv_py.lstrip("/")).exists()
    # The agent now runs with the venv and still knows it is emulated.
    probe = edgekit_json("devices", "probe", ALIAS, *board.cli_connection())
    assert probe["python_used"] == venv_py and probe["arch"] == "aarch64"
    assert probe["emulation"]["emulated"] is True
    assert {r["name"] for r in probe["runtimes"]} == {"ai_edge_litert", "onnxruntime"}


def test_bench_on_the_board_matches_host_accuracy_and_is_stored(board, board_setup, host_build,
                                                                 tmp_path):
    db = tmp_path / "board.db"
    results = _bench(board, host_build, ALIAS, db)
    assert [r["artifact"]["target"] for r in results] == list(TARGETS)
    for r in results:
        target = r["artifact"]["target"]
        assert r["ok"], r["error"]
        m, info = r["metrics"], r["device_info"]
        assert info["arch"] == "aarch64" and info["python_used"] == board_setup["python"]
        assert m["runtime"] == RUNTIME_OF[target]
        assert m["latency_ms"]["runs"] == RUNS and m["warmup"] == WARMUP
        assert m["latency_ms"]["p50"] > 0 and m["input_source"] == "eval"
        # Emulation shows in the run document itself and in the device facts.
        assert m["emulation"]["emulated"] is True and info["emulation"]["emulated"] is True
        host = host_build.local[target]
        assert host["ok"] and host["artifact"]["sha256"] == r["artifact"]["sha256"]
        assert host["metrics"]["emulation"]["emulated"] is False
        # The same artifact on the same eval data: the same accuracy on aarch64 as on x86_64.
        assert m["accuracy"]["samples"] == host["metrics"]["accuracy"]["samples"] > 100
        (agree,) = m["agreement"]
        assert r["settings"]["reference"] == "host"
        if target.startswith("tflite"):  # LiteRT's int8 / fp16 kernels agree bit for bit here
            assert m["accuracy"]["top1"] == host["metrics"]["accuracy"]["top1"], target
            assert agree["top1_agreement"] == 1.0 and agree["max_abs_error"] < 0.02, agree
        else:
            # onnxruntime's int8 kernels differ between x86_64 (u8s8 with int16 intermediate
            # sums) and arm64: measured 5 of 450 eval samples flip (top-1 agreement 0.989, output
            # SQNR 28 dB, accuracy within 0.7 points). A real cross-architecture difference, so the
            # bound is explicit, not equality.
            diff = abs(m["accuracy"]["top1"] - host["metrics"]["accuracy"]["top1"])
            assert diff <= 0.02, (target, m["accuracy"], host["metrics"]["accuracy"])
            # On a host with VNNI (U8S8 without the int16 saturation) the outputs can also be
            # the same bytes: no noise, no SQNR (None).
            assert agree["top1_agreement"] >= 0.98, agree
            assert agree["sqnr_db"] is None and agree["max_abs_error"] == 0 \
                or agree["sqnr_db"] >= 20, agree
    # Stored: one row per artifact, readable back through the CLI with the emulation flag.
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT device, artifact_sha256, ok, accuracy FROM results").fetchall()
    assert sorted(rows) == sorted((ALIAS, r["artifact"]["sha256"], 1,
                                   r["metrics"]["accuracy"]["top1"]) for r in results)
    listed = edgekit_json("results", "list", "--db", db, "--device", ALIAS)
    assert len(listed) == 3
    assert all(x["metrics"]["emulation"]["emulated"] for x in listed)
    table = edgekit("results", "list", "--db", db).stderr
    assert table.count("emulated") >= 3


def test_a_second_bench_uploads_nothing(board, board_setup, host_build, tmp_path):
    results = _bench(board, host_build, ALIAS, tmp_path / "again.db")
    assert all(r["ok"] for r in results)
    assert [r["upload_bytes"] for r in results] == [0, 0, 0]


def test_agent_runs_tflite_runtime_on_the_board(board, board_setup_tflite_runtime, host_build,
                                                tmp_path):
    report = board_setup_tflite_runtime
    assert {r["name"] for r in report["runtimes"]} == {"tflite_runtime"}
    assert any(w.startswith("tflite_runtime-") and "aarch64" in w for w in report["wheels"])
    assert report["python"] == "/root/edgekit-tflrt/venv/bin/python"
    # A forced TFLite runtime cannot run the ONNX artifact: that one fails alone, with a clear
    # error; the bench exits 1 and still prints and stores every result.
    proc = edgekit("bench", host_build.folder, "--device", TFLRT, "--runs", RUNS, "--warmup",
                   WARMUP, "--eval", host_build.eval_npz, "--db", tmp_path / "tflrt.db",
                   "--timeout", RUN_TIMEOUT, "--runtime", "tflite_runtime",
                   *board.cli_connection(), "--json", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    by_target = {r["artifact"]["target"]: r for r in json.loads(proc.stdout)}
    for target in ("tflite-int8", "tflite-fp16"):
        r = by_target[target]
        assert r["ok"], r["error"]
        m = r["metrics"]
        assert m["runtime"] == "tflite_runtime" and m["runtime_version"].startswith("2.14")
        assert r["device_info"]["python_used"] == report["python"]
        assert m["emulation"]["emulated"] is True
        assert m["accuracy"] == host_build.local[target]["metrics"]["accuracy"]
    onnx = by_target["onnx-int8"]
    assert not onnx["ok"] and "tflite_runtime" in onnx["error"] and ".onnx" in onnx["error"]


def test_bench_table_marks_emulated_latencies(board, board_setup, host_build, tmp_path):
    model = host_build.folder / "digits_cnn.tflite-int8.tflite"
    proc = edgekit("bench", model, "--device", ALIAS, "--device", "local", "--runs", 5,
                   "--warmup", 1, "--db", tmp_path / "t.db", *board.cli_connection())
    rows = [ln for ln in proc.stderr.splitlines() if "digits_cnn" in ln and "│" in ln]
    assert len(rows) == 2, proc.stderr
    (board_row,) = [ln for ln in rows if ALIAS in ln]
    (local_row,) = [ln for ln in rows if "local" in ln]
    assert "emulated" in board_row and "emulated" not in local_row


def _mounts_under(folder):
    return [line.split()[1] for line in open("/proc/self/mounts")
            if line.split()[1].startswith(str(folder) + "/")]


def test_a_board_is_torn_down_by_its_own_pid(board_key, tmp_path):
    from conftest import board_script, start_board

    other = start_board(tmp_path, board_key, alias="armboard2")
    try:
        assert other.sshd_alive()
        assert len(_mounts_under(tmp_path)) == 4  # proc, dev, dev/pts, dev/shm
        ok = subprocess.run(["ssh", "-F", str(other.ssh_config), "-o", "BatchMode=yes",
                             "armboard2", "cat /proc/1/comm >/dev/null; echo up"],
                            capture_output=True, text=True, timeout=120)
        assert ok.stdout.strip() == "up", ok.stderr
    finally:
        board_script("destroy", tmp_path / "board", timeout=120)
    assert not other.sshd_alive()
    assert _mounts_under(tmp_path) == [] and not (tmp_path / "board").exists()


def test_a_failed_start_leaves_nothing_mounted(board, board_key, tmp_path):
    from conftest import board_script

    # The session board already listens on this port: this sshd cannot bind and exits.
    with pytest.raises(RuntimeError, match="sshd exited before listening"):
        board_script("start", tmp_path / "board", board.port, str(board_key) + ".pub",
                     timeout=300)
    assert _mounts_under(tmp_path) == []
    assert not (tmp_path / "board" / "sshd.pid").exists()
    assert board.sshd_alive()  # and the running board was left alone


def test_bench_through_a_labgrid_place_that_exports_the_board(board, board_setup, host_build,
                                                              tmp_path):
    """A team's lab: a real labgrid exporter exports the emulated board as a NetworkService;
    `bench --device labgrid:PLACE` takes the SSH target from it, holds the place while it
    measures on aarch64 and releases it."""
    from conftest_lab import start_lab

    from edgekit.devices.lab.client import LabClient

    lab = start_lab(board.port, boards=1)
    try:
        place = lab.make_place("armboard-lab", "board1")
        inv = tmp_path / "devices.toml"  # the lab's boards: this key; the coordinator
        inv.write_text(f'[labgrid]\ncoordinator = "{lab.address}"\nkey = "{board.user_key}"\n')
        results = edgekit_json(
            "bench", host_build.folder, "--device", f"labgrid:{place}", "--runs", RUNS,
            "--warmup", WARMUP, "--eval", host_build.eval_npz, "--db", tmp_path / "lab.db",
            "--timeout", RUN_TIMEOUT, "--inventory", inv, "--known-hosts", board.known_hosts,
            "--connect-timeout", "60")
        assert [r["artifact"]["target"] for r in results] == list(TARGETS)
        for r in results:
            assert r["ok"], r["error"]
            assert r["device"] == f"labgrid:{place}" and r["device_info"]["arch"] == "aarch64"
            assert r["metrics"]["emulation"]["emulated"] is True
            assert r["lease"]["place"] == place and r["lease"]["coordinator"] == lab.address
        with LabClient(lab.address) as c:
            assert c.place(place).holder is None  # released after the bench
    finally:
        lab.stop()


def test_diagnose_on_the_board_compares_each_layer_with_the_host(board, board_setup, tmp_path):
    """`edgekit diagnose --device armboard`: the onnx-int8 artifact's layers computed by the
    board's ONNX Runtime (aarch64 kernels) against the host's, layer by layer in graph order."""
    from calibration_data.digits import digits_path
    from edgekit.demo import DigitsCNN, train_digits_cnn

    model = train_digits_cnn(tmp_path / "digits_cnn.keras", DigitsCNN(epochs=2))
    doc = edgekit_json("diagnose", model, "--target", "onnx-int8", "--calibration",
                       digits_path("calibration"), "--eval", digits_path("eval"), "--device",
                       ALIAS, "--samples", "2", *board.cli_connection())["device"]
    assert doc["device"] == ALIAS and doc["samples"] == 2
    layers = doc["layers"]
    assert doc["compared"] == len(layers) > 3
    # The quantized input is the same bytes on both machines; later layers may differ by the
    # kernels' rounding (ONNX Runtime's int8 kernels are not the same code on x86 and arm64).
    assert layers[0]["device_sqnr_db"] is None and layers[0]["device_max_abs_error"] == 0
    for r in layers:
        assert r["device_sqnr_db"] is None or r["device_sqnr_db"] > 0
    first = doc["first_departure"]
    if first is not None:  # named with its figures, and every layer before it agreed
        assert all(r["device_sqnr_db"] is None or r["device_sqnr_db"] >= first["device_sqnr_db"]
                   for r in layers[:first["index"]])
    print("layers:", [(r["layer"], r["device_sqnr_db"]) for r in layers], "first:", first)
