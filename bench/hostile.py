"""What hostile requests cost a real server: status, seconds, response bytes and the server's memory.

Starts `vae-serve` from a source tree (`--source`, default this checkout; pass an older checkout to compare)
on 127.0.0.1 over a copy of models/mnist-2d, gRPC on a free port, and sends each case once:

    python -m bench.hostile [--source DIR] [CASE ...]      # no CASE: all of them

Cases (each bounded: one request, or a bounded number of sockets and streams, and a timeout):

- http-embeddings-1m: /v1/embeddings with `input` a list of 1,000,000 integers (a 2 MB body)
- http-sample-1m-keys: /v1/sample with 1,000,000 unknown keys (a 13 MB body)
- http-model-15mb: /v1/embeddings naming a model of 15 MB
- http-charset-punycode: a multipart body declaring charset=punycode with an invalid value
- http-jpeg-1000-scans: a 4000x4000 progressive JPEG with 1,000 repeated scans (0.1 MB)
- http-png-2000-ztxt: a 28x28 PNG followed by 2,000 zTXt chunks that each inflate to 1 MiB
- http-png-14mb-exif: a 28x28 PNG with a 14 MB eXIf chunk
- grpc-model-15mb: ModelMetadata for a model named by 15 MB
- grpc-stall: 4 connections x 8 streams declaring 16 MB, sending 4 MiB, then nothing
- grpc-nonreader: 2 connections x 8 calls whose 12.8 MB answers are never read (window 0)
- grpc-idle: 300 raw TCP connections that never send the HTTP/2 preface
- grpc-slots: 9 connections x 256 streams that send headers and nothing else
- model-huge: a second model whose 0.5 KB decoder names a 2.5 GB (sparse) external data file

"during"/"after" lines probe a well-behaved gRPC and HTTP client beside the attack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from hostile_inputs import (  # noqa: E402
    RawH2,
    exif_chunk,
    grpc_message,
    png_with_chunks,
    png_with_trailing_chunks,
    progressive_jpeg,
    ztxt_chunks,
)

from bench.ports import free_port  # noqa: E402
from bench.servers import cli_module  # noqa: E402
from service.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402

MB = 1 << 20


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return -1


class Target:
    def __init__(self, source: Path, models: Path, env: dict[str, str]):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log = models.parent / "server.log"
        full = {
            **os.environ, "PYTHONPATH": str(source), "VAE_MODELS_DIR": str(models), "VAE_PROVIDER": "cpu",
            "VAE_PORT": str(self.http_port), "VAE_GRPC_PORT": str(self.grpc_port), "VAE_WORKERS": "1",
            "VAE_RELOAD_INTERVAL_S": "0", "VAE_INTRA_OP_THREADS": "1", "VAE_DEFAULT_MODEL": "mnist-2d", **env,
        }  # fmt: skip
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", cli_module(source)],
                env=full,
                cwd=source,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def rss(self) -> int:
        return _status(self.proc.pid, "VmRSS")

    def peak(self) -> int:
        return _status(self.proc.pid, "VmHWM")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def probe(self, label: str) -> None:
        started = time.perf_counter()
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            try:
                ready = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                    pb.ServerReadyRequest(), timeout=3
                )
                got = f"ready={ready.ready}"
            except grpc.RpcError as exc:
                got = exc.code().name
        try:
            http = str(httpx.get(self.url + "/healthz", timeout=3).status_code)
        except httpx.TransportError as exc:
            http = type(exc).__name__
        print(
            f"    {label}: gRPC ServerReady {got} ({time.perf_counter() - started:.2f} s), "
            f"HTTP /healthz {http}; "
            f"server RSS {self.rss()} MB, fds {self.fds()}"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _http(t: Target, path: str, **kwargs: object) -> None:
    before = t.peak()
    started = time.perf_counter()
    try:
        r = httpx.post(t.url + path, timeout=120, **kwargs)  # type: ignore[arg-type]
        what = f"{r.status_code}, {len(r.content)} bytes: {r.text[:100]!r}"
    except httpx.HTTPError as exc:
        what = type(exc).__name__
    print(f"  {what}\n  {time.perf_counter() - started:.2f} s, server peak RSS +{t.peak() - before} MB")


def _image(t: Target, data: bytes) -> None:
    _http(t, "/v1/encode", files={"files": ("x", data, "application/octet-stream")})


def _multipart_punycode(t: Target) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n\xff\xfe-x\r\n--b--\r\n'
    _http(
        t,
        "/v1/encode",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=b; charset=punycode"},
    )


def _grpc_big_name(t: Target) -> None:
    before, started = t.peak(), time.perf_counter()
    options = [("grpc.max_send_message_length", 64 * MB)]
    with grpc.insecure_channel(f"127.0.0.1:{t.grpc_port}", options=options) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                pb.ModelMetadataRequest(name="m" * (15 * MB)), timeout=30
            )
            what = "OK"
        except grpc.RpcError as exc:
            what = f"{exc.code().name}, message of {len(exc.details() or '')} characters"
    print(f"  {what}\n  {time.perf_counter() - started:.2f} s, server peak RSS +{t.peak() - before} MB")


async def _grpc_stall(t: Target) -> None:
    conns = [await RawH2.open(t.grpc_port, answer_pings=True) for _ in range(4)]
    sent = 0
    for conn in conns:
        for i in range(8):
            conn.start_call(1 + 2 * i)
            head = grpc_message(b"\x01" * (4 * MB), declared=16_000_000)
            sent += await conn.send(1 + 2 * i, head, end=False, timeout_s=5)
    print(f"  {sent // MB} MiB sent on 32 streams")
    t.probe("during")
    started = time.perf_counter()
    ended = await asyncio.gather(*(c.wait_ended(1, 40) for c in conns))
    took = time.perf_counter() - started
    print(f"  first stream of each connection: {sorted(set(map(str, ended)))} after {took:.1f} s")
    t.probe("after")
    for conn in conns:
        conn.close()


async def _grpc_nonreader(t: Target) -> None:
    request = pb.ModelInferRequest(model_name="mnist-2d-decoder")
    request.inputs.add(name="z", datatype="FP32", shape=[4096, 2])
    request.raw_input_contents.append(np.zeros((4096, 2), np.float32).tobytes())
    message = grpc_message(request.SerializeToString())
    conns = [await RawH2.open(t.grpc_port, window=0, answer_pings=True) for _ in range(2)]
    for conn in conns:
        for i in range(8):
            conn.start_call(1 + 2 * i)
            await conn.send(1 + 2 * i, message, end=True)
    await asyncio.sleep(5)
    t.probe("during")
    started = time.perf_counter()
    ended = await asyncio.gather(*(c.wait_ended(15, 60) for c in conns))
    took = time.perf_counter() - started
    print(f"  last stream of each connection: {sorted(set(map(str, ended)))} after {took:.1f} s")
    await asyncio.sleep(1)
    t.probe("after")
    for conn in conns:
        conn.close()


async def _grpc_idle(t: Target) -> None:
    socks = []
    for _ in range(300):
        try:
            socks.append(socket.create_connection(("127.0.0.1", t.grpc_port), timeout=2))
        except OSError:
            break
    print(f"  {len(socks)} sockets open")
    t.probe("during")
    await asyncio.sleep(12)
    t.probe("after 12 s")
    for s in socks:
        s.close()


async def _grpc_slots(t: Target) -> None:
    conns = [await RawH2.open(t.grpc_port, answer_pings=True) for _ in range(9)]
    await asyncio.sleep(0.3)
    for conn in conns:
        for i in range(256):
            conn.start_call(1 + 2 * i)
    await asyncio.sleep(2)
    refused = sum(1 for c in conns for how in c.ended.values() if how == "reset")
    print(f"  {9 * 256} streams opened, {refused} refused by the server at once")
    t.probe("during")
    await asyncio.sleep(18)
    t.probe("after 20 s")
    for conn in conns:
        conn.close()


def _huge_model(models: Path) -> None:
    import onnx
    from onnx import TensorProto

    folder = models / "huge" / "1"
    shutil.copytree(models / "mnist-2d" / "1", folder)
    graph = onnx.load(folder / "decoder.onnx")
    biggest = max(graph.graph.initializer, key=lambda t: len(t.raw_data))
    huge = TensorProto(name=biggest.name, data_type=TensorProto.FLOAT, dims=[int(2.5 * (1 << 30)) // 4])
    huge.data_location = TensorProto.EXTERNAL
    huge.external_data.add(key="location", value="huge.bin")
    graph.graph.initializer.remove(biggest)
    graph.graph.initializer.append(huge)
    (folder / "decoder.onnx").write_bytes(graph.SerializeToString())
    with (folder / "huge.bin").open("wb") as fh:
        fh.truncate(int(2.5 * (1 << 30)))
    manifest = json.loads((folder / "model.json").read_text())
    manifest["name"] = "huge"
    from vae_contract.manifest import sha256_file

    manifest["decoder"]["sha256"] = sha256_file(folder / "decoder.onnx")
    (folder / "model.json").write_text(json.dumps(manifest))


HTTP_CASES: dict[str, Callable[[Target], None]] = {
    "http-embeddings-1m": lambda t: _http(
        t, "/v1/embeddings", content=b'{"input": [' + b",".join([b"0"] * 1_000_000) + b"]}",
        headers={"content-type": "application/json"},
    ),
    "http-sample-1m-keys": lambda t: _http(
        t, "/v1/sample", content=json.dumps({f"k{i}": 0 for i in range(1_000_000)}).encode(),
        headers={"content-type": "application/json"},
    ),
    "http-model-15mb": lambda t: _http(t, "/v1/embeddings", json={"model": "m" * (15 * MB), "input": []}),
    "http-charset-punycode": _multipart_punycode,
    "http-jpeg-1000-scans": lambda t: _image(t, progressive_jpeg(4000, 4000, 1000)),
    "http-png-2000-ztxt": lambda t: _image(t, png_with_trailing_chunks((28, 28), ztxt_chunks(2000))),
    "http-png-14mb-exif": lambda t: _image(t, png_with_chunks((28, 28), [exif_chunk(14 * MB)])),
    "grpc-model-15mb": _grpc_big_name,
}  # fmt: skip
ASYNC_CASES = {
    "grpc-stall": _grpc_stall, "grpc-nonreader": _grpc_nonreader, "grpc-idle": _grpc_idle,
    "grpc-slots": _grpc_slots,
}  # fmt: skip
CASES = [*HTTP_CASES, *ASYNC_CASES, "model-huge"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="source tree to serve (default: this one)")
    parser.add_argument("--env", action="append", default=[], help="VAE_X=value for the server (repeatable)")
    parser.add_argument("cases", nargs="*", choices=[[], *CASES], default=[])
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    for case in args.cases or CASES:
        with tempfile.TemporaryDirectory(prefix="vae-hostile-") as tmp:
            models = Path(tmp) / "models"
            shutil.copytree(ROOT / "models" / "mnist-2d", models / "mnist-2d")
            if case == "model-huge":
                _huge_model(models)
            started = time.perf_counter()
            target = Target(args.source.resolve(), models, env)
            try:
                print(f"{case} (server {target.rss()} MB at start)")
                if case == "model-huge":
                    loaded = httpx.get(target.url + "/v1/models", timeout=10).json()
                    states = {m["name"]: bool(m.get("version")) for m in loaded["models"]}
                    print(f"  started in {time.perf_counter() - started:.1f} s; loaded: {states}; "
                          f"peak RSS {target.peak()} MB")  # fmt: skip
                    r = httpx.post(target.url + "/v1/sample", json={"model": "mnist-2d", "n": 1}, timeout=10)
                    print(f"  mnist-2d beside it: {r.status_code}")
                elif case in HTTP_CASES:
                    HTTP_CASES[case](target)
                else:
                    asyncio.run(ASYNC_CASES[case](target))
            finally:
                target.stop()


if __name__ == "__main__":
    main()
