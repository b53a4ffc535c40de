"""Start a real Triton server for `model_repository/`: the bundled CPU build, or NVIDIA's container on a GPU.

Why a module and not a shell script: `make triton`, the pytest fixture and the Truss model all need the same
steps, and the CPU build needs some assembly that is easy to get subtly wrong. The `nvidia-pytriton` wheel
(0.7.0) bundles Triton 2.51 (= NGC 24.10) with its python backend, but not as a ready backend directory:
we assemble one (backend library, utils module and the stub built for the running Python), put Python's
LIBDIR and the wheel's `nvidia_pytriton.libs` on LD_LIBRARY_PATH, and put the running interpreter's `bin`
first on PATH so the stub's interpreter sees this environment's packages (numpy < 2: with numpy 2 the 2.51
python backend returns empty tensors). `whisper_stream` is put on PYTHONPATH so the python models import
the package they translate for, installed or not.

On a GPU machine the same repository runs in the pinned `tritonserver:25.12-trtllm-python-py3` image (as
extended by build_engine/Dockerfile); `docker_command` is that documented `docker run`.

    python -m triton_launcher            # CPU: start, wait for readiness, serve until Ctrl-C
    python -m triton_launcher --gpu      # print and run the docker command
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PACKAGE_PARENT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = PACKAGE_PARENT / "model_repository"
DEFAULT_HTTP_PORT = 8010
DEFAULT_GRPC_PORT = 8011
DEFAULT_METRICS_PORT = 8012
# build_engine/Dockerfile: tritonserver:25.12-trtllm-python-py3 (TensorRT-LLM 1.1.0) + this package. The
# engines only load under the TensorRT that built them, so Triton serves from the image that built them.
DEFAULT_IMAGE = "whisper-stream-trtllm:25.12"
BUILD_IMAGE = "docker build -f build_engine/Dockerfile -t whisper-stream-trtllm:25.12 ."
DEFAULT_ENGINE = "whisper_large_v3_fp16_b16"  # build_engine's default output under engines/
ENSEMBLE = "whisper_ensemble"


@dataclass(frozen=True)
class Ports:
    http: int = DEFAULT_HTTP_PORT
    grpc: int = DEFAULT_GRPC_PORT
    metrics: int = DEFAULT_METRICS_PORT

    @classmethod
    def from_env(cls) -> Ports:
        env = os.environ
        return cls(
            http=int(env.get("TRITON_HTTP_PORT", DEFAULT_HTTP_PORT)),
            grpc=int(env.get("TRITON_GRPC_PORT", DEFAULT_GRPC_PORT)),
            metrics=int(env.get("TRITON_METRICS_PORT", DEFAULT_METRICS_PORT)),
        )

    @classmethod
    def free(cls) -> Ports:
        """Three distinct free loopback ports (tests run beside whatever else listens)."""
        return cls(*free_ports(3))


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class BundledTriton:
    """Where the pieces of Triton live inside the installed `nvidia-pytriton` wheel."""

    root: Path  # site-packages/pytriton/tritonserver
    libs: Path  # site-packages/nvidia_pytriton.libs

    @classmethod
    def find(cls) -> BundledTriton:
        try:
            import pytriton
        except ImportError as exc:
            raise RuntimeError(
                "CPU Triton comes from the nvidia-pytriton wheel: pip install nvidia-pytriton==0.7.0"
            ) from exc
        root = Path(next(iter(pytriton.__path__))) / "tritonserver"
        return cls(root=root, libs=root.parent.parent / "nvidia_pytriton.libs")

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"

    def backend_directory(self, dest: Path) -> Path:
        """Assemble `dest/python/` = backend library + utils + the stub for this Python; returns dest."""
        python = dest / "python"
        python.mkdir(parents=True, exist_ok=True)
        shipped = self.root / "backends" / "python"
        for src in (shipped / "libtriton_python.so", shipped / "triton_python_backend_utils.py", self.stub):
            if not src.exists():
                raise RuntimeError(f"bundled Triton is incomplete: {src} is missing")
            target = python / src.name
            if not target.exists():
                target.symlink_to(src)
        return dest

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(self.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libdirs if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return package_environment(env)


def package_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with this package importable by Triton's python stubs (they start clean)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class TritonServer:
    """One local tritonserver process (its own process group, so its python stubs stop with it)."""

    repository: Path = DEFAULT_REPOSITORY
    ports: Ports = field(default_factory=Ports)
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    # An installed tritonserver with its own backends (NVIDIA's images: /opt/tritonserver/bin/tritonserver)
    # instead of the CPU build bundled in nvidia-pytriton.
    binary: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _workdir: Path | None = field(default=None, init=False, repr=False)
    _shm_prefix: str = field(
        default_factory=lambda: f"wstriton_{uuid.uuid4().hex[:8]}_", init=False, repr=False
    )

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def command(self, backends: Path | None = None, bundled: BundledTriton | None = None) -> list[str]:
        local = [] if bundled is None or backends is None else [
            f"--backend-directory={backends}",
            f"--cache-directory={bundled.root / 'caches'}",
            "--allow-gpu-metrics=false",  # the CPU build has no GPU to report on
        ]  # fmt: skip
        binary = self.binary or (bundled.binary if bundled else Path("tritonserver"))
        return [
            str(binary),
            f"--model-repository={self.repository}",
            *local,
            "--http-address=127.0.0.1",
            f"--http-port={self.ports.http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.ports.grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.ports.metrics}",
            "--exit-timeout-secs=5",
            # Unique shared-memory names so a killed server's leftovers can be removed (see stop()).
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            *self.extra_args,
        ]

    def start(self) -> None:
        if self.running:
            raise RuntimeError("Triton is already running")
        if self._workdir is None:  # kept across restarts: same log, same backend directory
            self._workdir = Path(tempfile.mkdtemp(prefix="whisper-stream-triton-"))
        if self.binary is None:
            bundled = BundledTriton.find()
            argv = self.command(bundled.backend_directory(self._workdir / "backends"), bundled)
            env = bundled.environment()
        else:
            argv, env = self.command(), package_environment()
        log_path = self.log_path or self._workdir / "tritonserver.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._process = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.log_path = log_path

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until /v2/health/ready says every model is loaded; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"tritonserver exited before it was ready:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, graceful: bool = True, timeout: float = 15.0) -> None:
        """Graceful: SIGTERM to tritonserver, which unloads its models. Not graceful (a crash, for tests):
        SIGKILL. Either way the whole process group goes last, so no python stub outlives the server, and the
        stubs' shared-memory regions are removed (a killed server leaves them in /dev/shm)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if graceful:
                    process.terminate()
                else:
                    os.killpg(process.pid, signal.SIGKILL)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        for leftover in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def cleanup(self) -> None:
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def docker_command(ports: Ports, image: str | None = None, project: Path = PACKAGE_PARENT) -> list[str]:
    """The documented GPU run: the project's Triton + TensorRT-LLM image with this checkout mounted.

    The image is build_engine/Dockerfile (`nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3` plus this
    package installed in editable mode at /workspace/whisper-stream, so mounting the checkout there serves the
    live code). The whisper model picks the TensorRT-LLM engine on its GPU instance from
    WHISPER_STREAM_ENGINE_DIR; without engines there it falls back to CTranslate2.
    """
    image = image or os.environ.get("TRITON_IMAGE", DEFAULT_IMAGE)
    workdir = "/workspace/whisper-stream"
    engine_dir = os.environ.get("WHISPER_STREAM_ENGINE_DIR", f"{workdir}/engines/{DEFAULT_ENGINE}")
    return [
        "docker", "run", "--rm", "--gpus", "all", "--shm-size=2g", "--ulimit", "memlock=-1",
        "-p", f"127.0.0.1:{ports.http}:{ports.http}",
        "-p", f"127.0.0.1:{ports.grpc}:{ports.grpc}",
        "-p", f"127.0.0.1:{ports.metrics}:{ports.metrics}",
        "-v", f"{project}:{workdir}", "-w", workdir,
        "-e", f"WHISPER_STREAM_ENGINE_DIR={engine_dir}",
        image,
        "tritonserver", f"--model-repository={workdir}/model_repository",
        f"--http-port={ports.http}", f"--grpc-port={ports.grpc}", f"--metrics-port={ports.metrics}",
    ]  # fmt: skip


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "GPU" in result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m triton_launcher", description=(__doc__ or "").split("\n")[0]
    )
    env_ports = Ports.from_env()
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--http-port", type=int, default=env_ports.http)
    parser.add_argument("--grpc-port", type=int, default=env_ports.grpc)
    parser.add_argument("--metrics-port", type=int, default=env_ports.metrics)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help="run NVIDIA's container (default on GPU machines)")
    mode.add_argument("--cpu", action="store_true", help="run the bundled CPU build even on a GPU machine")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for readiness")
    args = parser.parse_args(argv)
    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)

    if args.gpu or (not args.cpu and has_gpu()):
        command = docker_command(ports)
        print(f"# image built with: {BUILD_IMAGE}\n{shlex.join(command)}", flush=True)
        return 0 if args.dry_run else subprocess.call(command)

    server = TritonServer(repository=args.model_repository.resolve(), ports=ports)
    if args.dry_run:
        print(shlex.join(server.command(Path("<backends>"), BundledTriton.find())))
        return 0
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"starting Triton (log: {server.log_path}) ...", flush=True)
    try:
        deadline = time.monotonic() + args.timeout
        while not server.is_ready():
            if stop or time.monotonic() > deadline or not server.running:
                print(server.log_tail(), file=sys.stderr)
                print("Triton did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(
            f"Triton ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}\n"
            f"  model '{ENSEMBLE}' from {server.repository}; log {server.log_path}\n"
            f"  serve the websocket API with: make serve ENGINE=triton TRITON_URL={server.grpc_url}",
            flush=True,
        )
        while not stop and server.running:
            time.sleep(0.5)
        return 0 if stop else 1
    finally:
        server.cleanup()
