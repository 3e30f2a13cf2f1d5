"""Fourier slice extraction (projection) and insertion (back-projection): throughput, peak memory, accuracy.

Backends, each measured in a fresh subprocess per (backend, operation, box) so that peak memory is clean:

- ``tomohet``     : :class:`tomohet.physics.projector.VolumeProjector` (oversampling 2) and
  :class:`~tomohet.physics.projector.FourierAccumulator` (images padded to the grid, per-pixel weights);
- ``tomohet_v0``  : the first FourierAccumulator.insert (8 corners x 2 ``index_add_``, boolean compaction),
  kept here only to report the before/after of its rewrite;
- ``tfs``         : torch-fourier-slice 0.6.0 ``extract_central_slices_rfft_3d`` / ``insert_central_slices_rfft_3d``
  (optional, benchmark-only dependency);
- ``tp``          : torch-projectors 0.13.1 CPU backend ``project_3d_to_2d_forw`` / ``backproject_2d_to_3d_forw``
  (its wheel does not load with torch 2.13: build it from source in its own venv and pass ``--tp-python``).

Throughput: images/s of one call on a batch of random rotations (2 torch threads), from the best of the timed
calls (robust to other load on the machine; the median is recorded too). Peak memory: VmHWM minus the
RSS before the backend's state (precomputed volume transform / accumulation grid) was made, read from
``/proc/self/status`` after resetting the high-water mark (``/proc/self/clear_refs``).

Accuracy, on a phantom of Gaussian blobs whose projections are known analytically (a 3D Gaussian projects to a
2D Gaussian; its Fourier transform is a Gaussian with a phase ramp):
- extraction: relative RMS error of the projection's half spectrum on the box grid against the analytic
  spectrum, inside the band (|k| < Nyquist) and in the shell 0.5-0.8 Nyquist;
- insertion: analytic spectra of padded images at random rotations -> insert -> Wiener (data / (weight + eps))
  -> gridding correction -> crop; FSC against the sampled phantom at 0.5 and 0.8 Nyquist.

Run: ``.venv/bin/python benchmarks/bench_projector.py [--quick] [--tp-python /tmp/tpvenv/bin/python]``.
Writes ``benchmarks/results/projector.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402

from tomohet.physics.fourier import crop_to, irfft2_centered, pad_to  # noqa: E402
from tomohet.physics.projector import (  # noqa: E402
    FourierAccumulator,
    VolumeProjector,
    gridding_correction,
    slice_coordinates,
    wiener_volume,
)

BOXES = (32, 64, 128)
BATCH = {32: 256, 64: 128, 128: 32}  # images per call
BACKENDS = ("tomohet", "tomohet_v0", "tfs", "tp")
OPS = ("extract", "insert")
THREADS = 2


# ----------------------------------------------------------------------------------------------- phantom
def random_rotations(n: int, seed: int) -> torch.Tensor:
    """Uniformly distributed rotation matrices ``[n, 3, 3]`` float32 (random unit quaternions)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    m = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    return m.float()


def blobs(box: int, seed: int = 0, n: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres ``[n, 3]`` (x, y, z, pixels from the origin at box//2), widths ``[n]`` and amplitudes ``[n]``."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    r = 0.2 * box * torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    centres = d / d.norm(dim=1, keepdim=True) * r
    sigma = 1.5 + 1.0 * torch.rand(n, generator=g, dtype=torch.float64)
    amp = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    return centres, sigma, amp


def phantom_volume(box: int, seed: int = 0) -> torch.Tensor:
    """The blobs sampled on the ``[D, D, D]`` grid (z, y, x), float32."""
    c, s, a = blobs(box, seed)
    k = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for ci, si, ai in zip(c, s, a, strict=True):
        vol += ai * torch.exp(-((x - ci[0]) ** 2 + (y - ci[1]) ** 2 + (z - ci[2]) ** 2) / (2 * si**2))
    return vol.float()


def analytic_spectra(box: int, size: int, rotations: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Exact half centred spectra ``[B, M, M//2+1]`` (M = ``size``; M > box means images padded to M) of the
    phantom's projections with rotations ``A`` (x_img = A x_ref): each blob projects to a 2D Gaussian at
    ``(A c)[:2]``; unnormalised-DFT scaling of tomohet's FFT convention."""
    c, s, a = blobs(box, seed)
    ky = (torch.arange(size, dtype=torch.float64) - size // 2)[:, None]
    kx = torch.arange(size // 2 + 1, dtype=torch.float64)[None, :]
    q2 = (kx**2 + ky**2) / size**2  # cycles / pixel, squared
    p = torch.einsum("bij,nj->bni", rotations.double(), c)[..., :2]  # [B, n, 2] image-plane centres
    out = torch.zeros(rotations.shape[0], size, size // 2 + 1, dtype=torch.complex128)
    for i in range(len(s)):
        amp = a[i] * (2 * math.pi * s[i] ** 2) ** 1.5 * torch.exp(-2 * math.pi**2 * s[i] ** 2 * q2)
        phase = -2 * math.pi * (kx * p[:, i, 0, None, None] + ky * p[:, i, 1, None, None]) / size
        out += amp * torch.polar(torch.ones_like(phase), phase)
    return out.to(torch.complex64)


def band_errors(est: torch.Tensor, ref: torch.Tensor, box: int) -> dict[str, float]:
    """Relative RMS error of half spectra on the box grid: whole band and shell 0.5-0.8 Nyquist."""
    ky = (torch.arange(box) - box // 2)[:, None].float()
    kx = torch.arange(box // 2 + 1)[None, :].float()
    r = torch.sqrt(kx**2 + ky**2) / (box / 2)  # fraction of Nyquist
    out = {}
    for name, sel in (("relrms_band", r < 1.0), ("relrms_0.5-0.8nyq", (r >= 0.5) & (r < 0.8))):
        e, g = (est - ref)[:, sel].abs() ** 2, ref[:, sel].abs() ** 2
        out[name] = float(torch.sqrt(e.double().sum() / g.double().sum()))
    return out


def fsc_at(vol: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    from tomohet.physics.filters import fsc

    box = vol.shape[-1]
    curve = fsc(vol, ref)
    return {f"fsc_{f}nyq": float(curve[round(f * box / 2)]) for f in (0.5, 0.8)}


# ----------------------------------------------------------------------------------------------- memory
def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MB
    return float("nan")


def reset_peak() -> float:
    """Reset VmHWM to the current RSS (Linux >= 4.0); returns the RSS in MB."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status("VmRSS")


# ----------------------------------------------------------------------------------------------- backends
def _half_to_volume(data: torch.Tensor, weight: torch.Tensor, box: int, eps: float) -> torch.Tensor:
    """Wiener volume from half centred (fftshift on z, y; x = 0..G/2) sums: the rfft twin of wiener_volume."""
    g = data.shape[-3]
    ft = data / (weight + eps)
    kz = (torch.arange(g) - g // 2).float()
    kx = torch.arange(g // 2 + 1).float()
    r2 = kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + kx[None, None, :] ** 2
    ft = ft * (r2 < (g / 2) ** 2)
    vol = torch.fft.irfftn(torch.fft.ifftshift(ft, dim=(-3, -2)), s=(g, g, g), dim=(-3, -2, -1))
    vol = torch.fft.fftshift(vol, dim=(-3, -2, -1)) / gridding_correction(g)
    return crop_to(vol, box, 3).contiguous()


def _volume_rfft(vol: torch.Tensor, g: int, centred: bool) -> torch.Tensor:
    """Padded, gridding-precorrected volume -> rfft; ``centred``: fftshift on z, y (tfs), else FFTW (tp)."""
    v = pad_to(vol, g, 3) / gridding_correction(g)
    ft = torch.fft.rfftn(torch.fft.ifftshift(v, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    return torch.fft.fftshift(ft, dim=(-3, -2)) if centred else ft


class LegacyAccumulator(FourierAccumulator):
    """The first FourierAccumulator.insert, verbatim (for the before/after comparison only)."""

    def insert(self, spectra, weights, rotations):  # noqa: D102
        b, m = spectra.shape[0], spectra.shape[-2]
        g = self.grid
        coords, inband = slice_coordinates(rotations, m, g / m)
        half = torch.ones(m, m // 2 + 1, device=spectra.device)
        half[:, 0] = 0.5
        keep = (inband * half).expand(b, -1, -1).reshape(-1)
        sel = keep > 0
        keep = keep[sel]
        c = coords.reshape(-1, 3)[sel] + g // 2
        vals = torch.view_as_real(spectra.reshape(-1)[sel]) * keep[:, None]
        wts = None if weights is None else weights.reshape(-1)[sel].to(torch.float32) * keep
        c0 = torch.floor(c)
        f = c - c0
        c0 = c0.long()
        for dz in (0, 1):
            wz = f[:, 2] if dz else 1 - f[:, 2]
            iz = c0[:, 2] + dz
            for dy in (0, 1):
                wy = f[:, 1] if dy else 1 - f[:, 1]
                iy = c0[:, 1] + dy
                for dx in (0, 1):
                    wx = f[:, 0] if dx else 1 - f[:, 0]
                    ix = c0[:, 0] + dx
                    w = wz * wy * wx
                    ok = (ix >= 0) & (ix < g) & (iy >= 0) & (iy < g) & (iz >= 0) & (iz < g)
                    w = w * ok
                    flat = (iz.clamp(0, g - 1) * g + iy.clamp(0, g - 1)) * g + ix.clamp(0, g - 1)
                    self.data.index_add_(0, flat, vals * w[:, None])
                    if wts is not None:
                        self.weight.index_add_(0, flat, wts * w)
        self.count += b


def make_extractor(backend: str, vol: torch.Tensor):
    """``(state, fn)``: ``fn(rotations)`` returns what the backend returns; ``to_box(out)`` -> half centred
    spectra on the box grid for the accuracy check."""
    box = vol.shape[-1]
    g = 2 * box
    if backend == "tomohet":
        proj = VolumeProjector(vol, oversampling=2)
        return proj.project_ft, lambda out: out
    if backend == "tfs":
        from torch_fourier_slice import extract_central_slices_rfft_3d

        vft = _volume_rfft(vol, g, centred=True)

        def to_box(out):  # slices on the padded grid -> real space -> crop -> box-grid spectrum
            from tomohet.physics.fourier import rfft2_centered

            return rfft2_centered(crop_to(irfft2_centered(out, g), box, 2).contiguous())

        return lambda r: extract_central_slices_rfft_3d(vft, r.transpose(-1, -2)), to_box
    if backend == "tp":
        import torch_projectors as tp

        vft = _volume_rfft(vol, g, centred=False)[None].contiguous()

        def fn(r):
            rt = r.transpose(-1, -2).contiguous()[None]
            return tp.project_3d_to_2d_forw(vft, rt, output_shape=(box, box), oversampling=2.0)[0]

        return fn, lambda out: torch.fft.fftshift(out, dim=-2)
    raise ValueError(f"backend {backend!r} has no extractor")


def make_inserter(backend: str, box: int):
    """``(insert(spectra, weights, rotations), volume(eps))`` accumulating padded half centred spectra."""
    g = 2 * box
    if backend in ("tomohet", "tomohet_v0"):
        acc = (FourierAccumulator if backend == "tomohet" else LegacyAccumulator)(g)

        def volume(eps):
            data, weight = acc.finalize()
            return wiener_volume(data, weight, box, eps * float(weight.mean()))

        return acc.insert, volume
    sums: dict[str, torch.Tensor] = {}

    def add(data, weight):
        if not sums:
            sums["data"], sums["weight"] = data, weight
        else:
            sums["data"] += data
            sums["weight"] += weight

    if backend == "tfs":
        from torch_fourier_slice import insert_central_slices_rfft_3d

        def insert(spectra, weights, rotations):
            # torch-fourier-slice carries no per-pixel weights: it returns trilinear counts
            data, weight = insert_central_slices_rfft_3d(spectra, (g, g, g), rotations.transpose(-1, -2))
            add(data, weight)

        def volume(eps):
            return _half_to_volume(sums["data"], sums["weight"], box, eps * float(sums["weight"].mean()))

        return insert, volume
    if backend == "tp":
        import torch_projectors as tp

        def insert(spectra, weights, rotations):
            proj = torch.fft.ifftshift(spectra, dim=-2)[None].contiguous()
            rt = rotations.transpose(-1, -2).contiguous()[None]
            data, weight = tp.backproject_2d_to_3d_forw(proj, rt, weights=weights[None].contiguous())
            add(data[0], weight[0])

        def volume(eps):
            data = torch.fft.fftshift(sums["data"], dim=(-3, -2))
            weight = torch.fft.fftshift(sums["weight"], dim=(-3, -2))
            return _half_to_volume(data, weight, box, eps * float(weight.mean()))

        return insert, volume
    raise ValueError(f"backend {backend!r} has no inserter")


# ----------------------------------------------------------------------------------------------- one case
def run_case(backend: str, op: str, box: int, quick: bool) -> dict:
    torch.set_num_threads(THREADS)
    b = BATCH[box]
    min_time = 0.5 if quick else 2.0
    rot = random_rotations(b, seed=1)
    vol = phantom_volume(box)
    g = 2 * box
    if op == "insert":
        spectra = torch.randn(b, g, g // 2 + 1, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
        weights = torch.rand(b, g, g // 2 + 1, generator=torch.Generator().manual_seed(3))
    rss0 = reset_peak()
    t_setup = time.perf_counter()
    if op == "extract":
        fn, to_box = make_extractor(backend, vol)
        call = lambda: fn(rot)  # noqa: E731
    else:
        insert, volume = make_inserter(backend, box)
        call = lambda: insert(spectra, weights, rot)  # noqa: E731
    t_setup = time.perf_counter() - t_setup
    call()  # warm-up
    times, cpu, t0 = [], time.process_time(), time.perf_counter()
    while True:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        dt = time.perf_counter() - t0
        if (dt >= min_time and len(times) >= 3) or dt >= 6 * min_time:
            break
    cpu = time.process_time() - cpu
    peak = _status("VmHWM") - rss0
    best, median = min(times), sorted(times)[len(times) // 2]
    rec = {
        "backend": backend, "op": op, "box": box, "batch": b, "calls": len(times),
        "images_per_s": b / best, "images_per_s_median": b / median, "ms_per_call": 1000 * best,
        "cpu_ms_per_call": 1000 * cpu / len(times), "setup_s": t_setup, "peak_mb": peak,
    }  # fmt: skip
    # accuracy (not timed)
    if op == "extract":
        r_acc = random_rotations(64, seed=11)
        est = to_box(fn(r_acc))
        rec.update(band_errors(est, analytic_spectra(box, box, r_acc), box))
    else:
        n_img = (1 if quick else 2) * g
        ins, vol_fn = make_inserter(backend, box)
        r_all = random_rotations(n_img, seed=12)
        for lo in range(0, n_img, b):
            r = r_all[lo : lo + b]
            ins(analytic_spectra(box, g, r), torch.ones(len(r), g, g // 2 + 1), r)
        rec["n_images_fsc"] = n_img
        rec.update(fsc_at(vol_fn(1e-4), vol))
    return rec


# ----------------------------------------------------------------------------------------------- driver
def _versions(python: str) -> dict:
    code = (
        "import json, importlib.metadata as m, torch\n"
        "out = {'torch': torch.__version__}\n"
        "for p in ('torch-fourier-slice', 'torch-projectors'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else {}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short timings, fewer images for the FSC")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--boxes", default=",".join(map(str, BOXES)))
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--tp-python", default=os.environ.get("TP_PYTHON", "/tmp/tpvenv/bin/python"),
                    help="interpreter with torch-projectors (a venv where it was built from source)")  # fmt: skip
    ap.add_argument("--out", default=str(HERE / "results" / "projector.json"))
    ap.add_argument("--case", nargs=3, metavar=("BACKEND", "OP", "BOX"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        backend, op, box = args.case
        print(json.dumps(run_case(backend, op, int(box), args.quick)))
        return

    interpreters = {b: sys.executable for b in BACKENDS}
    interpreters["tp"] = args.tp_python
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS=str(THREADS))
    records, skipped = [], []
    for box in map(int, args.boxes.split(",")):
        for op in args.ops.split(","):
            for backend in args.backends.split(","):
                if op == "extract" and backend == "tomohet_v0":
                    continue
                py = interpreters[backend]
                if not Path(py).exists():
                    skipped.append(f"{backend}: interpreter {py} not found")
                    continue
                cmd = [py, str(Path(__file__).resolve()), "--case", backend, op, str(box)]
                cmd += ["--quick"] if args.quick else []
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    msg = (res.stderr.strip().splitlines() or ["?"])[-1]
                    skipped.append(f"{backend} {op} {box}: {msg}")
                    print(f"skip {backend} {op} {box}: {msg}", file=sys.stderr)
                    continue
                rec = json.loads(res.stdout.strip().splitlines()[-1])
                records.append(rec)
                acc = {k: round(v, 6) for k, v in rec.items() if k.startswith(("relrms", "fsc"))}
                print(f"{backend:>11} {op:7} box {box:3d}: {rec['images_per_s']:9.1f} img/s "
                      f"{rec['peak_mb']:8.1f} MB  {acc}", flush=True)  # fmt: skip
    meta = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "torch_threads": THREADS, "platform": platform.platform()},
        "versions": {"main": _versions(sys.executable), "tp": _versions(args.tp_python)},
        "quick": args.quick,
        "batch": BATCH,
        "skipped": skipped,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    print_table(records)
    print(f"wrote {out}")


def print_table(records: list[dict]) -> None:
    print(f"\n{'op':7} {'box':>4} {'backend':>11} {'img/s':>9} {'ms/call':>9} {'peak MB':>8}  accuracy")
    for r in sorted(records, key=lambda r: (r["op"], r["box"], r["backend"])):
        if r["op"] == "extract":
            acc = f"relRMS band {r['relrms_band']:.2e}, 0.5-0.8 Nyq {r['relrms_0.5-0.8nyq']:.2e}"
        else:
            acc = f"FSC 0.5 Nyq {r['fsc_0.5nyq']:.4f}, 0.8 Nyq {r['fsc_0.8nyq']:.4f}"
        print(f"{r['op']:7} {r['box']:4d} {r['backend']:>11} {r['images_per_s']:9.1f} {r['ms_per_call']:9.1f} "
              f"{r['peak_mb']:8.1f}  {acc}")  # fmt: skip


if __name__ == "__main__":
    main()
