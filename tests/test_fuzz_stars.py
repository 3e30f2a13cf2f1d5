"""Fuzzing the readers: a tiny simulated dataset, written as a RELION 5 project, a Warp v1 image-series star and
RELION 3.1 subtomograms, has its STAR files (and a few image files) mutated in 150 ways with a fixed seed:
deleted, renamed and swapped fields, shifted columns, text / NaN / inf / zero / negative values in numeric
columns, empty tables, duplicated and dropped rows, deleted blocks, truncated files, stacks of the wrong box,
truncated or missing stacks. Reading each mutant (``read_any``, then every image or volume) must either succeed
or stop with an :class:`InputError`, never any other exception, and no file it was given may change."""

from __future__ import annotations

import hashlib
import random
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from tomohet.data.io import read_any
from tomohet.data.relion5 import read_relion5
from tomohet.data.star import read_star, write_star
from tomohet.data.subtomo import write_relion31_subtomograms
from tomohet.data.warp_v1 import write_warp_v1
from tomohet.errors import InputError
from tomohet.simulate.datasets import simulate_preset

N_MUTANTS = 150
SEED = 20240614
LABELS = [
    "rlnOpticsGroup", "rlnRandomSubset", "rlnTomoHand", "rlnVoltage", "rlnImagePixelSize", "rlnImageSize",
    "rlnAngleRot", "rlnDefocusU", "rlnGroupName", "rlnImageName", "rlnTomoName", "rlnTomoParticleName",
    "rlnCtfBfactor", "rlnMagnification", "rlnDetectorPixelSize", "rlnTomoProjX", "rlnMicrographPreExposure",
]  # fmt: skip
BAD_VALUES = ["abc", "nan", "inf", "-inf", "0", "-1", "1e30", "", "[1,2]", "3.5", "-12"]

Blocks = dict[str, object]


def digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def absolute_images(blocks: Blocks, base: Path, columns: tuple[str, ...]) -> None:
    """Rewrite image paths (``N@stack`` or plain) as absolute so the star works from any folder."""
    for b in blocks.values():
        if not isinstance(b, pd.DataFrame):
            continue
        for c in columns:
            if c in b.columns:
                out = []
                for name in b[c].astype(str):
                    frame, at, stack = name.rpartition("@")
                    out.append(f"{frame}{at}{(base / stack).resolve()}")
                b[c] = out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, object]:
    """The three source projects as parsed STAR blocks with absolute image paths, plus one stack and volume."""
    out = tmp_path_factory.mktemp("fuzz_base")
    layout, _ = simulate_preset(
        "smoke", out / "sim", seed=2, n_particles=4, acquisition={"tilt_max": 6.0, "n_tomograms": 2}
    )
    ds = read_relion5(layout.optimisation_set)
    w1 = write_warp_v1(ds, out / "w1" / "w1.star")
    sub = write_relion31_subtomograms(ds, out / "sub", batch_size=4, oversampling=1)
    parts, tomos = read_star(layout.particles_star), read_star(layout.tomograms_star)
    absolute_images(parts, layout.particles_star.parent, ("rlnImageName",))
    w1_blocks = read_star(w1)
    absolute_images(w1_blocks, w1.parent, ("rlnImageName",))
    sub_blocks = read_star(sub)
    absolute_images(sub_blocks, sub.parent, ("rlnImageName", "rlnCtfImage"))
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {
        "relion5": {"particles.star": parts, "tomograms.star": tomos},
        "warp_v1": {"w1.star": w1_blocks},
        "subtomo": {"sub.star": sub_blocks},
        "stack": ds.images.paths[0],
        "volume": read_star(sub)["particles"]["rlnImageName"].iloc[0],
        "sub_dir": sub.parent,
        "files": files,
        "digest": digest(files),
    }


def copy_blocks(blocks: Blocks) -> Blocks:
    return {k: (v.copy() if isinstance(v, pd.DataFrame) else dict(v)) for k, v in blocks.items()}  # type: ignore[union-attr]


# --- mutations of parsed blocks -----------------------------------------------------------------------------------


def pick_loop(blocks: Blocks, rng: random.Random) -> tuple[str, pd.DataFrame] | None:
    loops = [k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and v.shape[1] > 0]
    if not loops:
        return None
    k = rng.choice(loops)
    return k, blocks[k]  # type: ignore[return-value]


def m_delete_column(blocks: Blocks, rng: random.Random) -> str:
    k, df = pick_loop(blocks, rng) or (None, None)
    if df is None:
        return "noop"
    c = rng.choice(list(df.columns))
    blocks[k] = df.drop(columns=c)
    return f"delete {k}.{c}"


def m_swap_columns(blocks: Blocks, rng: random.Random) -> str:
    k, df = pick_loop(blocks, rng) or (None, None)
    if df is None or df.shape[1] < 2:
        return "noop"
    a, b = rng.sample(list(df.columns), 2)
    blocks[k] = df.rename(columns={a: b, b: a})
    return f"swap {k}.{a}<->{b}"


def m_rename_column(blocks: Blocks, rng: random.Random) -> str:
    k, df = pick_loop(blocks, rng) or (None, None)
    if df is None:
        return "noop"
    c = rng.choice(list(df.columns))
    new = rng.choice([x for x in LABELS if x not in df.columns] or ["rlnSomethingElse"])
    blocks[k] = df.rename(columns={c: new})
    return f"rename {k}.{c}->{new}"


def m_bad_cell(blocks: Blocks, rng: random.Random) -> str:
    k, df = pick_loop(blocks, rng) or (None, None)
    if df is None or len(df) == 0:
        return "noop"
    c = rng.choice(list(df.columns))
    r = rng.randrange(len(df))
    v = rng.choice(BAD_VALUES)
    df = df.astype({c: object})
    df.iloc[r, df.columns.get_loc(c)] = v
    blocks[k] = df
    return f"cell {k}.{c}[{r}]={v!r}"


def m_bad_column(blocks: Blocks, rng: random.Random) -> str:
    """A whole column of one bad value (e.g. rlnOpticsGroup 'abc' everywhere, pixel size 0, voltage -1)."""
    k, df = pick_loop(blocks, rng) or (None, None)
    if df is None:
        return "noop"
    preferred = [c for c in df.columns if c in LABELS]
    c = rng.choice(preferred or list(df.columns))
    v = rng.choice(BAD_VALUES)
    df = df.copy()
    df[c] = v
    blocks[k] = df
    return f"column {k}.{c}={v!r}"


def m_rows(blocks: Blocks, rng: random.Random) -> str:
    k, df = pick_loop(blocks, rng) or (None, None)
    if df is None:
        return "noop"
    op = rng.choice(["empty", "duplicate", "drop", "shuffle", "half"])
    if op == "empty" or len(df) == 0:
        blocks[k] = df.iloc[0:0]
    elif op == "duplicate":
        r = rng.randrange(len(df))
        blocks[k] = pd.concat([df, df.iloc[[r]]], ignore_index=True)
    elif op == "drop":
        blocks[k] = df.drop(index=df.index[rng.randrange(len(df))]).reset_index(drop=True)
    elif op == "shuffle":
        blocks[k] = df.sample(frac=1.0, random_state=rng.randrange(1000)).reset_index(drop=True)
    else:
        blocks[k] = df.iloc[: len(df) // 2].reset_index(drop=True)
    return f"rows {k} {op}"


def m_blocks(blocks: Blocks, rng: random.Random) -> str:
    k = rng.choice(list(blocks))
    op = rng.choice(["delete", "rename", "to_dict"])
    if op == "delete" and len(blocks) > 1:
        del blocks[k]
    elif op == "rename":
        blocks[f"{k}_renamed" if k else "renamed"] = blocks.pop(k)
    elif isinstance(blocks[k], pd.DataFrame) and len(blocks[k]) > 0:  # type: ignore[arg-type]
        blocks[k] = blocks[k].iloc[0].to_dict()  # type: ignore[union-attr]
    return f"block {k} {op}"


def m_key_value(blocks: Blocks, rng: random.Random) -> str:
    kvs = [k for k, v in blocks.items() if isinstance(v, dict) and v]
    if not kvs:
        return m_bad_cell(blocks, rng)
    k = rng.choice(kvs)
    key = rng.choice(list(blocks[k]))  # type: ignore[arg-type]
    blocks[k][key] = rng.choice(BAD_VALUES + ["2"])  # type: ignore[index]
    return f"kv {k}.{key}"


def m_projection(blocks: Blocks, rng: random.Random) -> str:
    """A projection matrix that is not a rotation (scaled, sheared, mirrored) or not a vector at all."""
    tilts = [k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and "rlnTomoProjX" in v.columns and len(v)]
    if not tilts:
        return m_bad_cell(blocks, rng)
    k = rng.choice(tilts)
    df = blocks[k].copy()  # type: ignore[union-attr]
    c = rng.choice(["rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ"])
    r = rng.randrange(len(df))
    vec = [float(x) for x in str(df[c].iloc[r]).strip("[]").split(",")]
    op = rng.choice(["scale", "shear", "mirror", "garbage", "short"])
    if op == "scale":
        vec[:3] = [2.0 * x for x in vec[:3]]
    elif op == "shear":
        vec[0] += 0.3
    elif op == "mirror":
        vec[:3] = [-x for x in vec[:3]]
    df = df.astype({c: object})
    df.iloc[r, df.columns.get_loc(c)] = (
        "[a,b,c,d]" if op == "garbage" else "[1,0]" if op == "short" else "[" + ",".join(map(repr, vec)) + "]"
    )
    blocks[k] = df
    return f"projection {k}.{c}[{r}] {op}"


def m_image_name(blocks: Blocks, rng: random.Random, stack: Path, sub_dir: Path) -> str:
    """Point an image at a missing, truncated, wrong-box or garbage file, or break its ``N@`` frame."""
    loops = [k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and "rlnImageName" in v.columns and len(v)]
    if not loops:
        return m_bad_cell(blocks, rng)
    k = rng.choice(loops)
    df = blocks[k].copy()  # type: ignore[union-attr]
    r = rng.randrange(len(df))
    name = str(df["rlnImageName"].iloc[r])
    frame, at, path = name.rpartition("@")
    op = rng.choice(["missing", "truncated", "wrong_box", "garbage", "frame"])
    target = sub_dir / f"{op}.mrc{'s' if at else ''}"
    if op == "truncated":
        target.write_bytes(Path(path).read_bytes()[:1500])
    elif op == "wrong_box":
        with mrcfile.new(target, overwrite=True) as m:
            m.set_data(np.zeros((8, 16, 16) if at else (16, 16, 16), dtype=np.float32))
    elif op == "garbage":
        target.write_bytes(np.random.default_rng(r).bytes(4000))
    if op == "frame":
        new = rng.choice(["0@", "999@", "x@", ""]) + path
    else:
        new = f"{frame}{at}{target}"
    df = df.astype({"rlnImageName": object})
    df.iloc[r, df.columns.get_loc("rlnImageName")] = new
    blocks[k] = df
    return f"image {k}[{r}] {op}"


BLOCK_MUTATIONS: list[Callable[[Blocks, random.Random], str]] = [
    m_delete_column, m_swap_columns, m_rename_column, m_bad_cell, m_bad_cell, m_bad_column, m_bad_column, m_rows,
    m_rows, m_blocks, m_key_value, m_projection,
]  # fmt: skip


# --- mutations of the written text --------------------------------------------------------------------------------


def mutate_text(text: str, rng: random.Random) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    data = [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith(("_", "data_", "loop_", "#"))]
    header = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("_")]
    op = rng.choice(["truncate", "drop_line", "dup_line", "shift_row", "extra_token", "header", "empty", "binary"])
    if op == "truncate":
        return text[: rng.randrange(max(1, len(text)))], op
    if op == "binary":
        return text[: len(text) // 2] + "\x00\xff garbage \x01\n", op
    if op == "empty":
        return "", op
    if op in ("drop_line", "dup_line") and lines:
        i = rng.randrange(len(lines))
        lines[i : i + 1] = [] if op == "drop_line" else [lines[i], lines[i]]
    elif op == "shift_row" and data:
        i = rng.choice(data)
        toks = lines[i].split()
        del toks[rng.randrange(len(toks))]
        lines[i] = " ".join(toks) + "\n"
    elif op == "extra_token" and data:
        i = rng.choice(data)
        lines[i] = lines[i].rstrip("\n") + " 42\n"
    elif op == "header" and header:
        i = rng.choice(header)
        lines[i] = f"_{rng.choice(LABELS)}\n"
    return "".join(lines), op


def write_mutant(base: dict, kind: str, rng: random.Random, folder: Path) -> tuple[Path, str]:
    """Write one mutant of ``kind`` into ``folder``; returns the file to read and what was changed."""
    folder.mkdir(parents=True)
    files = {name: copy_blocks(b) for name, b in base[kind].items()}
    target = rng.choice(list(files))
    how = rng.random()
    if how < 0.12:
        what = m_image_name(files[target], rng, base["stack"], folder)
    elif how < 0.75:
        what = rng.choice(BLOCK_MUTATIONS)(files[target], rng)
    else:
        what = "text"
    for name, blocks in files.items():
        write_star(blocks, folder / name)
    if what == "text":
        text, op = mutate_text((folder / target).read_text(), rng)
        (folder / target).write_text(text)
        what = f"text {op}"
    if kind == "relion5":
        entry = folder / "optimisation_set.star"
        write_star({"": {"rlnTomoParticlesFile": "particles.star", "rlnTomoTomogramsFile": "tomograms.star"}}, entry)
        if rng.random() < 0.1:  # read the particles star directly (the tomograms star is found beside it)
            entry = folder / "particles.star"
        return entry, f"{target}: {what}"
    return folder / target, f"{target}: {what}"


def test_fuzzed_stars_never_give_a_traceback(base, tmp_path):
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    kinds = ["relion5"] * 5 + ["warp_v1"] * 3 + ["subtomo"] * 2
    for k in range(N_MUTANTS):
        kind = rng.choice(kinds)
        folder = tmp_path / f"m{k:03d}"
        entry, what = write_mutant(base, kind, rng, folder)
        given = sorted(p for p in folder.rglob("*") if p.is_file())
        before = digest(given)
        try:
            ds = read_any(entry)
            ds.batch(np.arange(ds.n_particles))
            outcomes["read"] += 1
        except InputError as err:
            msg = str(err)
            assert "\n" not in msg, (what, msg)
            assert msg.startswith(str(err.path) if err.path is not None else "<input>"), (what, msg)
            outcomes["InputError"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutant {k} ({kind}, {what}) gave {type(exc).__name__}: {exc}")
        assert digest(given) == before, f"mutant {k} ({what}) modified its input"
        shutil.rmtree(folder)
    assert sum(outcomes.values()) == N_MUTANTS >= 100
    # the mutations are not all harmless, nor all fatal
    assert outcomes["InputError"] >= 60 and outcomes["read"] >= 10, outcomes
    assert digest(base["files"]) == base["digest"]
