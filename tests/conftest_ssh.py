"""Shared expensive test things: a digits model trained once, its TFLite/ONNX conversions, and a
real OpenSSH sshd (with its own host key, user key, known_hosts and ssh_config).

Imported by tests/devices/conftest.py and tests/test_agent.py (not a pytest plugin, so that it
works whether or not tests/ is a package). Builders are memoised per process, so a session builds
each thing once even when two modules import the fixtures.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.devices.spec import ConnectOptions, DeviceSpec

SSHD = "/usr/sbin/sshd"


def _tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


@dataclass
class DigitsModels:
    """Paths of one digits classifier in several formats plus its eval data."""

    folder: Path
    tflite_fp32: Path
    tflite_int8: Path
    tflite_fixed_batch: Path  # fp32 with a fixed batch of 1 (no dynamic dims)
    onnx_fp32: Path
    eval_npz: Path  # x (N, 8, 8, 1) float32 in [0, 1], y int labels
    reference_npz: Path  # Keras float outputs on eval x, keyed "output_0"
    keras_accuracy: float


@functools.lru_cache(maxsize=None)
def build_digits_models() -> DigitsModels:
    """Train a tiny CNN on sklearn's digits for a few seconds and convert it three ways."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf
    import tf2onnx
    from sklearn.datasets import load_digits

    folder = _tmpdir("edgekit-digits-")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inp)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1500], y[:1500], epochs=6, batch_size=32, verbose=0)
    x_eval, y_eval = x[1500:], y[1500:]
    ref = model.predict(x_eval, verbose=0)
    keras_acc = float(np.mean(ref.argmax(1) == y_eval))

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    fp32 = folder / "digits_fp32.tflite"
    fp32.write_bytes(conv.convert())

    def representative():
        for i in range(100):
            yield [x[i:i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    int8 = folder / "digits_int8.tflite"
    int8.write_bytes(conv.convert())

    fixed_inp = keras.Input(shape=(8, 8, 1), batch_size=1, name="image")
    h = fixed_inp
    for layer in model.layers[1:]:
        h = layer(h)  # the same trained layers, on an input with a fixed batch of 1
    conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(fixed_inp, h))
    fixed = folder / "digits_fixed_batch.tflite"
    fixed.write_bytes(conv.convert())

    fn = tf.function(lambda image: model(image))
    onnx_path = folder / "digits_fp32.onnx"
    tf2onnx.convert.from_function(
        fn, input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")],
        opset=17, output_path=str(onnx_path))

    eval_npz = folder / "eval.npz"
    np.savez(eval_npz, x=x_eval, y=y_eval)
    ref_npz = folder / "reference.npz"
    np.savez(ref_npz, output_0=ref)
    return DigitsModels(folder, fp32, int8, fixed, onnx_path, eval_npz, ref_npz, keras_acc)


# ----------------------------------------------------------------------------------------------
# sshd
# ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on port {port} within {timeout} s")


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "edgekit-test",
                    "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


@dataclass
class SshServer:
    """One running sshd on 127.0.0.1 and the client files that reach it."""

    port: int
    folder: Path
    host_key: Path
    user_key: Path
    known_hosts: Path  # has this server's host key
    ssh_config: Path  # Host alias "edgebox" -> 127.0.0.1:port, IdentityFile, UserKnownHostsFile
    proc: subprocess.Popen
    alias: str = "edgebox"

    @property
    def spec(self) -> str:
        return f"root@127.0.0.1:{self.port}"

    def host_key_line(self) -> str:
        pub = Path(str(self.host_key) + ".pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def children(self) -> list[int]:
        """PIDs of the per-connection sshd processes (direct children of the listener)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


def start_sshd(user_key: Path, alias: str = "edgebox", host_key: Path | None = None,
               extra_config: str = "") -> SshServer:
    """Start ``sshd -D -e`` on a free loopback port accepting ``user_key`` for root
    (``extra_config``: more sshd_config lines, e.g. ``PermitOpen``)."""
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    folder = _tmpdir("edgekit-sshd-")
    if host_key is None:
        host_key = keygen(folder / "host_ed25519")
    auth = folder / "authorized_keys"
    auth.write_text(Path(str(user_key) + ".pub").read_text())
    auth.chmod(0o600)
    port = free_port()
    cfg = folder / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {auth}\n"
        f"PidFile {folder / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 50\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
        # The emulated board's `python3` is the interpreter running the tests (a venv's, with the
        # runtimes), as a user's board has its runtime on PATH: not root's login-shell python3.
        # Root's ~/.bashrc, which bash reads for ssh commands, may put pyenv's shims first on
        # PATH: PYENV_VERSION=system makes a shim run the next python3 on PATH (the venv's).
        f"SetEnv PATH={Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin "
        "PYENV_VERSION=system\n" + extra_config)
    log = open(folder / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    wait_port(port)
    server = SshServer(port, folder, host_key, user_key, folder / "known_hosts",
                       folder / "ssh_config", proc, alias)
    server.known_hosts.write_text(server.host_key_line())
    server.ssh_config.write_text(
        f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
        f"  IdentityFile {user_key}\n  UserKnownHostsFile {server.known_hosts}\n")
    return server


@functools.lru_cache(maxsize=None)
def user_key() -> Path:
    return keygen(_tmpdir("edgekit-userkey-") / "id_ed25519")


def ssh_device(server: SshServer, workdir, name: str = "box", **kw) -> DeviceSpec:
    return DeviceSpec(name=name, host="127.0.0.1", user="root", port=server.port,
                      keys=(str(server.user_key),), workdir=str(workdir), **kw)


def connect_options(server: SshServer, **kw) -> ConnectOptions:
    kw.setdefault("connect_timeout", 10.0)
    return ConnectOptions(ssh_config=server.ssh_config, known_hosts=server.known_hosts, **kw)
