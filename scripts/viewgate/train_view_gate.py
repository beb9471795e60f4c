#!/usr/bin/env python
"""Build the data manifest, train the view/content gate, choose its decision rule
on validation, evaluate on a held-out test split, write weights + figures.

Usage (from this folder, with the cacxr venv; data/ is created here and never committed):
    python train_view_gate.py --prepare     # raw fetched files -> data/img/... PNGs (+ synthetic)
    python train_view_gate.py               # manifest, train, rule, test, write outputs
    python train_view_gate.py --exclude chexpert --out viewgate_nochexpert
                                            # the weights cacxr ships (src/cacxr/imaging/viewgate.safetensors,
                                            # viewgate-1+10ef1317f2): trained without the CheXpert images,
                                            # which then serve as an unseen test set (docs/viewgate.md)
The gate's model and preprocessing are cacxr's own (cacxr.imaging.viewgate): this script trains that network.

How data/raw/ was assembled (public GitHub snapshots, data files only, no code):
  data/raw/openist/Datasets/Chest_x-ray/*.jpg
        <- pi-null-mezon/OpenIST : Datasets/Chest_x-ray/*.jpg (275 frontal PA chest radiographs,
           500 px; the *@.png lung masks are skipped). Repo has no licence file; its README says the
           images come from the chestx-ray.com "normal CXR module" (terms not verified).
  data/raw/xinario/chest_xray/{1..10}.png, data/raw/xinario/sample.png, LICENSE
        <- xinario/chestViewSplit : chest_xray/*.png, sample.png (Apache-2.0). 1,3,6,9.png are
           lateral, the others frontal; sample.png is a 2-panel figure (left PA, right lateral),
           cut into two images.
  data/raw/auriml/chest_xray/chest_xray_new/5i5mch.png
        <- auriml/chestViewSplit (fork of the above) : chest_xray/chest_xray_new/5i5mch.png
           (16-bit lateral, apparently PadChest; 7wa3ao.png in the same folder is nearly blank
           and unused; other files of that folder are absent from the snapshot, > 4 MiB).
  data/raw/chexpert/CheXpert-v1.0-small/{valid.csv,valid/patient*/study*/view*.jpg}
        <- rishabhbhardwaj/ChestXRay-Classification : CheXpert-v1.0-small/ (the CheXpert-small
           validation set re-hosted in that repo: 234 images, 200 patients, 202 frontal, 32
           lateral; view from valid.csv "Frontal/Lateral"). Licence: Stanford CheXpert Research
           Use Agreement (non-commercial research). Use --exclude chexpert to train without it.
  data/raw/radinformatics/example_images/{0..9}.png, LICENSE
        <- radinformatics/bone-age : example_images/*.png (MIT; 10 paediatric hand radiographs,
           apparently RSNA bone-age challenge images) -> not_radiograph (other body part).
  data/raw/pydicom-data/data_store/data/*.dcm
        <- pydicom/pydicom-data : data_store/data/*.dcm (MIT). RG1_* (a project test input)
           deleted; CT, MR, US, NM, SEG, OT test images used as not_radiograph, plus RG3 (knee
           CR radiograph = radiograph of another body part -> not_radiograph).
  pydicom package test files (pydicom/pydicom : src/pydicom/data/test_files, MIT) read from the
        installed pydicom; skimage.data sample photos (CC0 / public domain per their docstrings)
        read from the installed scikit-image.
  synthetic: documents, plots, screenshots, colour charts rendered here with PIL/matplotlib.

Snapshot commits used (git HEAD of each fetched repository):
  pi-null-mezon/OpenIST 0a3fceb1ac58e1848f994ee6ec226c58e55d70b0
  xinario/chestViewSplit 70e272160ab716d49ef2a62f21c18091b05c9415
  auriml/chestViewSplit 248c073fdacf6e5510d15ef16d44c99c904f71f9
  rishabhbhardwaj/ChestXRay-Classification cb6db7eab66933e1ddbfe51cfe1d9ceef23adbdd
  radinformatics/bone-age ab500616aee812dbf5e03dfff4738f7af49d80cb
  pydicom/pydicom-data b0d40d1e0a42c5696936043bbd8059984259cd33
  installed packages: pydicom 3.0.2, scikit-image 0.26.0
To redo it with plain git, e.g.:
  git clone https://github.com/pi-null-mezon/OpenIST /tmp/x && git -C /tmp/x checkout 0a3fceb1 \
    && mkdir -p data/raw/openist && cp -r /tmp/x/Datasets data/raw/openist/
and likewise for the other repositories (copy only the paths listed above; the layout under
data/raw/<name>/ mirrors the repository layout). Then delete data/raw/pydicom-data/**/RG1_*.

Never used: ieee8023/covid-chestxray-dataset or any fork/copy of it, any circ-ml repository,
mlmed/torchxrayvision (its tests/ ship covid-chestxray-dataset images), and
../shared/data/real_cxr/* (those are only classified at the end, for the report).
Near-duplicates (incl. of the real_cxr files) are removed by a 32x32 thumbnail correlation test.
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RAW = DATA / "raw"
IMG = DATA / "img"
REAL_CXR = HERE.parents[2] / "shared" / "data" / "real_cxr"  # ../shared beside the repository
SEED = 20261203

SOURCES = {
    "openist": dict(repo="pi-null-mezon/OpenIST", path="Datasets/Chest_x-ray/*.jpg",
                    licence="none stated in repo (images from chestx-ray.com normal-CXR teaching module; terms unverified)"),
    "xinario": dict(repo="xinario/chestViewSplit", path="chest_xray/*.png, sample.png",
                    licence="Apache-2.0 (repository licence)"),
    "auriml": dict(repo="auriml/chestViewSplit", path="chest_xray/chest_xray_new/5i5mch.png",
                   licence="fork of Apache-2.0 repo, no licence file in fork; image apparently PadChest (BIMCV terms)"),
    "chexpert": dict(repo="rishabhbhardwaj/ChestXRay-Classification", path="CheXpert-v1.0-small/valid/patient*/study*/view*.jpg (+ valid.csv for the view)",
                     licence="Stanford CheXpert Research Use Agreement (non-commercial research; redistribution not permitted by the RUA - the repo re-hosts it). FLAGGED: maintainer must decide"),
    "radinformatics": dict(repo="radinformatics/bone-age", path="example_images/{0..9}.png",
                           licence="MIT (repository licence); hand radiographs apparently from the RSNA 2017 bone-age challenge (RSNA terms of use)"),
    "pydicom-data": dict(repo="pydicom/pydicom-data", path="data_store/data/*.dcm", licence="MIT"),
    "pydicom-tests": dict(repo="pydicom/pydicom", path="src/pydicom/data/test_files/*.dcm", licence="MIT"),
    "skimage": dict(repo="scikit-image/scikit-image", path="skimage/data/*.png|jpg",
                    licence="BSD-3 package; images CC0 / public domain / no known restrictions per skimage.data docstrings"),
    "synthetic": dict(repo="(generated here)", path="train_view_gate.py:make_synthetic",
                      licence="generated, no third-party content (DejaVu/PIL default fonts)"),
}


# =============================================================== preparation
def to_unit(a: np.ndarray, lo_p=0.5, hi_p=99.5) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, [lo_p, hi_p])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0, 1)


def gray(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3:
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return a


def save_png(path: Path, img01: np.ndarray, max_side=512) -> None:
    h, w = img01.shape
    s = max_side / max(h, w)
    if s < 1:
        img01 = cv2.resize(img01, (max(2, round(w * s)), max(2, round(h * s))), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.clip(img01 * 255 + 0.5, 0, 255).astype(np.uint8))


def dicom_frames(path: str) -> list:
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut
    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    frames = []
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif pi.startswith("YBR"):
        from pydicom.pixels import convert_color_space
        arr = convert_color_space(arr, pi, "RGB")
    if pi.startswith("MONO"):
        try:
            arr = apply_modality_lut(arr, ds)
        except Exception:
            pass
    is_color = arr.ndim == (4 if nf > 1 else 3) and arr.shape[-1] in (3, 4)
    seq = arr if nf > 1 else [arr]
    for fr in seq:
        g = gray(fr) if is_color else fr
        if g.ndim != 2:
            continue
        u = to_unit(g)
        if pi == "MONOCHROME1":
            u = 1 - u
        frames.append(u)
    return frames


def dicom_family_items(folder: Path, families: dict, source: str, prefix: str, max_frames: int, where: str) -> list:
    """not_radiograph items from DICOM files (file name -> image family), up to ``max_frames`` frames each."""
    found = []
    for fn, fam in families.items():
        p = folder / fn
        if not p.exists():
            continue
        try:
            frs = dicom_frames(str(p))
        except Exception as e:
            print("skip", fn, e); continue
        for k, fr in enumerate(frs[:max_frames]):
            found.append(("not_radiograph", source, prefix + fam, f"{Path(fn).stem}_f{k}", fr, where + fn))
    return found


def thumb(img01: np.ndarray) -> np.ndarray:
    t = cv2.resize(img01.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).ravel()
    t = t - t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


def load_real_cxr() -> dict:
    """Decode the six project test inputs (bone bright), for the final report and dedup only."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    out = {}
    for f in sorted(REAL_CXR.glob("*")):
        if f.suffix == ".png":
            a = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            a = gray(a) if a.ndim == 3 else a
            out[f.name] = (a.astype(np.float32) / (65535.0 if a.dtype == np.uint16 else 255.0))
        elif f.suffix == ".dcm":
            ds = pydicom.dcmread(str(f))
            a = ds.pixel_array.astype(np.float32)
            a = apply_modality_lut(a, ds)
            if "WindowCenter" in ds and "WindowWidth" in ds:
                a = apply_voi_lut(a, ds)
            a = np.asarray(a, np.float32)
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
            # one inversion when MONOCHROME1 or PresentationLUTShape INVERSE (never twice), like cacxr's reader
            inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
            if str(ds.PhotometricInterpretation) == "MONOCHROME1" or inverse:
                a = 1 - a
            out[f.name] = a.astype(np.float32)
    return out


def make_synthetic(out_dir: Path, n_doc=60, n_plot=60, n_screen=50, n_misc=30) -> list:
    """Render documents, plots, screenshots and misc graphics (deterministic)."""
    from PIL import Image, ImageDraw, ImageFont
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = random.Random(SEED)
    files = []
    words = ("patient report chest radiograph findings impression normal lungs heart size within limits "
             "the quick brown fox jumps over lazy dog invoice total amount date page table figure results "
             "method data analysis calcium score model version protocol").split()
    fonts = []
    for fp in glob.glob("/usr/share/fonts/**/*.ttf", recursive=True)[:8]:
        fonts.append(fp)

    def font(sz):
        if fonts:
            try:
                return ImageFont.truetype(rng.choice(fonts), sz)
            except Exception:
                pass
        return ImageFont.load_default()

    for i in range(n_doc):  # scanned documents / letters / forms
        W, H = rng.choice([(850, 1100), (1100, 850), (600, 800), (1240, 1754)])
        bg = rng.randint(200, 255)
        im = Image.new("L", (W, H), bg)
        d = ImageDraw.Draw(im)
        y = rng.randint(30, 90)
        sz = rng.randint(12, 26)
        f = font(sz)
        while y < H - 40:
            if rng.random() < 0.08:  # table
                rows, cols = rng.randint(2, 6), rng.randint(2, 5)
                cw, rh = (W - 120) // cols, sz + 10
                for r in range(rows + 1):
                    d.line([(60, y + r * rh), (60 + cols * cw, y + r * rh)], fill=0, width=1)
                for c in range(cols + 1):
                    d.line([(60 + c * cw, y), (60 + c * cw, y + rows * rh)], fill=0, width=1)
                y += rows * rh + 20
                continue
            line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
            d.text((rng.randint(40, 80), y), line, fill=rng.randint(0, 60), font=f)
            y += int(sz * rng.uniform(1.3, 2.2))
        a = np.asarray(im, np.float32) / 255
        if rng.random() < 0.5:  # scan artefacts
            a = a * np.linspace(rng.uniform(0.8, 1), 1, W)[None, :] + np.random.default_rng(i).normal(0, 0.03, a.shape)
        p = out_dir / f"doc_{i:03d}.png"
        save_png(p, np.clip(a, 0, 1)); files.append((p, f"synthetic-doc-{i:03d}"))

    for i in range(n_plot):  # plots / charts
        fig, ax = plt.subplots(figsize=(rng.uniform(4, 8), rng.uniform(3, 6)), dpi=80)
        r = np.random.default_rng(1000 + i)
        kind = i % 5
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                ax.plot(np.cumsum(r.normal(size=100)))
        elif kind == 1:
            ax.bar(range(8), r.uniform(1, 10, 8))
        elif kind == 2:
            ax.scatter(r.normal(size=200), r.normal(size=200), s=5)
        elif kind == 3:
            ax.imshow(r.normal(size=(20, 20)), cmap=rng.choice(["viridis", "gray", "hot"]))
        else:
            ax.hist(r.normal(size=500), bins=30)
        ax.set_title(" ".join(rng.choice(words) for _ in range(3)))
        ax.set_xlabel("x"); ax.set_ylabel("y")
        if rng.random() < 0.3:
            fig.patch.set_facecolor("black"); ax.set_facecolor("black")
        buf = io.BytesIO(); fig.savefig(buf, format="png"); plt.close(fig)
        a = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)
        p = out_dir / f"plot_{i:03d}.png"
        save_png(p, gray(a[..., ::-1]) / 255); files.append((p, f"synthetic-plot-{i:03d}"))

    for i in range(n_screen):  # screenshots: windows, panels, text, some with an image viewport
        W, H = rng.choice([(1280, 800), (1920, 1080), (1024, 768), (800, 600), (1440, 900)])
        im = Image.new("L", (W, H), rng.randint(0, 255))
        d = ImageDraw.Draw(im)
        d.rectangle([0, 0, W, rng.randint(20, 40)], fill=rng.randint(0, 255))
        for _ in range(rng.randint(3, 12)):
            x0, y0 = rng.randint(0, W - 100), rng.randint(30, H - 60)
            x1, y1 = min(W, x0 + rng.randint(80, W // 2)), min(H, y0 + rng.randint(40, H // 2))
            d.rectangle([x0, y0, x1, y1], fill=rng.randint(0, 255), outline=rng.randint(0, 255))
            f = font(rng.randint(10, 18))
            for k in range(rng.randint(0, 6)):
                d.text((x0 + 6, y0 + 6 + k * 18), " ".join(rng.choice(words) for _ in range(4)),
                       fill=rng.randint(0, 255), font=f)
        a = np.asarray(im, np.float32) / 255
        p = out_dir / f"screen_{i:03d}.png"
        save_png(p, a); files.append((p, f"synthetic-screen-{i:03d}"))

    for i in range(n_misc):  # gradients, noise, blank-ish, checkerboards, shapes
        r = np.random.default_rng(5000 + i)
        H, W = rng.choice([(512, 512), (400, 600), (600, 300)])
        k = i % 5
        if k == 0:
            a = np.linspace(0, 1, W)[None, :] * np.ones((H, 1))
            a = a if rng.random() < 0.5 else a.T[:H, :W] if H == W else a
        elif k == 1:
            a = cv2.GaussianBlur(r.uniform(size=(H, W)).astype(np.float32), (0, 0), rng.uniform(1, 20))
        elif k == 2:
            a = np.full((H, W), rng.uniform(0, 1)) + r.normal(0, 0.02, (H, W))
        elif k == 3:
            s = rng.randint(8, 64)
            a = ((np.arange(H)[:, None] // s + np.arange(W)[None, :] // s) % 2).astype(np.float32)
        else:
            a = np.zeros((H, W), np.float32)
            for _ in range(rng.randint(3, 15)):
                cv2.circle(a, (rng.randint(0, W), rng.randint(0, H)), rng.randint(5, 120), rng.uniform(0.2, 1), -1)
        p = out_dir / f"misc_{i:03d}.png"
        save_png(p, to_unit(np.asarray(a, np.float32), 0, 100)); files.append((p, f"synthetic-misc-{i:03d}"))
    return files


def prepare() -> None:
    """Convert data/raw/* (+ installed package samples + synthetic) into data/img/<label>/<source>/."""
    import shutil
    if IMG.exists():
        shutil.rmtree(IMG)
    items = []  # (label, source, group, name, img01, origin_path)

    for f in sorted(glob.glob(str(RAW / "openist/Datasets/Chest_x-ray/*.jpg"))):
        a = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        items.append(("frontal", "openist", "openist-" + Path(f).stem, Path(f).stem, a / 255.0,
                      "Datasets/Chest_x-ray/" + Path(f).name))
    lat = {"1", "3", "6", "9"}
    for f in sorted(glob.glob(str(RAW / "xinario/chest_xray/*.png"))):
        a = gray(cv2.imread(f, cv2.IMREAD_COLOR)[..., ::-1]) / 255.0
        st = Path(f).stem
        items.append(("lateral" if st in lat else "frontal", "xinario", "xinario-" + st, st, a,
                      "chest_xray/" + Path(f).name))
    s = gray(cv2.imread(str(RAW / "xinario/sample.png"), cv2.IMREAD_COLOR)[..., ::-1]) / 255.0
    # panels of the figure (text captions below excluded)
    items.append(("frontal", "xinario", "xinario-sample", "sample_left", s[12:405, 14:408], "sample.png[left panel]"))
    items.append(("lateral", "xinario", "xinario-sample", "sample_right", s[12:405, 428:822], "sample.png[right panel]"))
    a = cv2.imread(str(RAW / "auriml/chest_xray/chest_xray_new/5i5mch.png"), cv2.IMREAD_UNCHANGED)
    items.append(("lateral", "auriml", "auriml-5i5mch", "5i5mch", to_unit(a), "chest_xray/chest_xray_new/5i5mch.png"))

    # paediatric hand radiographs (radiographs of another body part -> not_radiograph)
    for f in sorted(glob.glob(str(RAW / "radinformatics/example_images/*.png"))):
        a = cv2.imread(f, cv2.IMREAD_GRAYSCALE) / 255.0
        items.append(("not_radiograph", "radinformatics", "hand-" + Path(f).stem, "hand_" + Path(f).stem, a,
                      "example_images/" + Path(f).name))

    # CheXpert-v1.0-small validation set (202 frontal + 32 lateral, 200 patients; group = patient)
    cx = RAW / "chexpert/CheXpert-v1.0-small"
    if (cx / "valid.csv").exists():
        for r in csv.DictReader(open(cx / "valid.csv")):
            f = RAW / "chexpert" / r["Path"]
            if not f.exists():
                continue
            a = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) / 255.0
            pat = r["Path"].split("/")[2]
            lab = "lateral" if r["Frontal/Lateral"] == "Lateral" else "frontal"
            items.append((lab, "chexpert", "chexpert-" + pat, "_".join(r["Path"].split("/")[2:]).replace(".jpg", ""),
                          a, r["Path"]))

    # DICOM not_radiograph sources; one encoding per distinct image (group = image family)
    pdd = RAW / "pydicom-data/data_store/data"
    families = {
        "693_UNCI.dcm": "ct-693", "JLSL_08_07_0_1F.dcm": "jlsl08", "JLSL_16_15_1_1F.dcm": "jlsl16",
        "JPEG-LL.dcm": "nm-bone", "JPGLosslessP14SV1_1s_1f_8b.dcm": "us-p14", "MR-SIEMENS-DICOM-WithOverlays.dcm": "mr-siemens",
        "MR2_UNCI.dcm": "mr2-shoulder", "OBXXXX1A_2frame.dcm": "us-ob", "OT-PAL-8-face.dcm": "ot-face",
        "RG3_J2KR.dcm": "rg3-knee", "US1_UNCI.dcm": "us1", "bad_sequence.dcm": "ct-neck", "color-px.dcm": "us-tee",
        "eCT_Supplemental.dcm": "ect", "emri_small.dcm": "emri", "explicit_VR-UN.dcm": "ct-pancreas",
        "gdcm-US-ALOKA-16.dcm": "us-aloka", "mlut_18.dcm": "mlut18", "vlut_04.dcm": "vlut04",
        "parametric_map_float.dcm": "pmap", "HTJ2K_08_RGB.dcm": "htj2k-rgb", "liver.dcm": "seg-liver",
        "SC_rgb.dcm": "sc-rgb",
    }
    items += dicom_family_items(pdd, families, "pydicom-data", "pdd-", 10, "data_store/data/")
    import pydicom
    tdir = Path(pydicom.__file__).parent / "data/test_files"
    tfam = {"CT_small.dcm": "ct-small", "MR_small.dcm": "mr-small", "JPEG2000.dcm": "j2k", "JPGExtended.dcm": "jpgext",
            "JPEG-lossy.dcm": "jpeg-lossy", "GDCMJ2K_TextGBR.dcm": "gdcm-text", "examples_overlay.dcm": "ex-overlay",
            "examples_palette.dcm": "ex-palette", "examples_rgb_color.dcm": "ex-rgb", "examples_ybr_color.dcm": "ex-ybr",
            "rtdose.dcm": "rtdose", "image_dfl.dcm": "image-dfl", "SC_rgb_small_odd.dcm": "sc-odd",
            "JPEGLSNearLossless_16.dcm": "jls16", "SC_jpeg_no_color_transform.dcm": "sc-jpeg-nct",
            "J2K_pixelrep_mismatch.dcm": "j2k-prm", "emri_small.dcm": "emri"}
    items += dicom_family_items(tdir, tfam, "pydicom-tests", "pdt-", 6, "src/pydicom/data/test_files/")
    import skimage.data as skd
    for n in ["astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel", "horse",
              "hubble_deep_field", "immunohistochemistry", "microaneurysms", "retina", "rocket", "text", "clock",
              "shepp_logan_phantom"]:
        try:
            a = getattr(skd, n)()
        except Exception as e:
            print("skip skimage", n, e); continue
        a = gray(np.asarray(a))
        items.append(("not_radiograph", "skimage", "sk-" + n, n, to_unit(a, 0, 100), f"skimage.data.{n}()"))

    # --- dedup (within sources and against the project's real_cxr test inputs) ---
    real = {k: thumb(v) for k, v in load_real_cxr().items()}
    kept, thumbs = [], []
    dropped = []
    for it in items:
        if it[4].size == 0 or float(it[4].std()) < 1e-3:
            dropped.append((it[3], "blank")); continue
        t = thumb(it[4])
        if any(float(t @ r) > 0.95 for r in real.values()):
            dropped.append((it[3], "matches real_cxr")); continue
        if any(float(t @ u) > 0.995 for u in thumbs):
            dropped.append((it[3], "near-duplicate")); continue
        thumbs.append(t); kept.append(it)
    rows = []
    for label, src, group, name, a, origin in kept:
        p = IMG / label / src / f"{group}__{name}.png"
        save_png(p, np.asarray(a, np.float32))
        rows.append(dict(file=str(p.relative_to(DATA)), label=label, source=src, group=group, origin=origin))
    syn = make_synthetic(IMG / "not_radiograph" / "synthetic")
    for p, group in syn:
        rows.append(dict(file=str(p.relative_to(DATA)), label="not_radiograph", source="synthetic", group=group,
                         origin="generated"))
    with open(DATA / "origins.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader(); w.writerows(rows)
    print(f"prepared {len(rows)} images; dropped {len(dropped)}:", dropped[:40])


# ================================================================ manifest
def build_manifest(exclude=(), name="manifest.csv") -> list:
    """Scan data/img (via data/origins.csv written by --prepare) and assign group-wise splits."""
    rows = list(csv.DictReader(open(DATA / "origins.csv")))
    rows = [r for r in rows if (DATA / r["file"]).exists() and r["source"] not in exclude]
    # split by group (patient / source image / volume), the same for every label of that group,
    # so that views of one patient never straddle train/val/test
    def split_of_group(g):
        u = int(hashlib.sha256(f"{SEED}:{g}".encode()).hexdigest()[:8], 16) / 16 ** 8
        return "test" if u < 0.2 else ("val" if u < 0.4 else "train")
    split_of = {(r["label"], r["group"]): split_of_group(r["group"]) for r in rows}
    # laterals are scarce: stratify the groups that contain a lateral 50/25/25 so that val and
    # test both hold a usable number of them (still group-wise: all views of a group move together)
    lat_groups = sorted({r["group"] for r in rows if r["label"] == "lateral"},
                        key=lambda g: hashlib.sha256(f"{SEED}:{g}".encode()).hexdigest())
    n = len(lat_groups)
    lat_split = {g: ("test" if i < round(0.25 * n) else "val" if i < round(0.5 * n) else "train")
                 for i, g in enumerate(lat_groups)}
    for key in split_of:
        if key[1] in lat_split:
            split_of[key] = lat_split[key[1]]
    for r in rows:
        src = SOURCES[r["source"]]
        r["split"] = split_of[(r["label"], r["group"])]
        r["repo"] = src["repo"]
        r["licence"] = src["licence"]
    with open(DATA / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "split", "source", "repo", "origin", "group", "licence"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in w.fieldnames})
    return rows


# ============================================================ augmentation
def augment(img: np.ndarray, rng: np.random.Generator, label: str):
    """Random view of a stored image. Returns (float32 [0,1] image, inverted flag)."""
    a = img.astype(np.float32)
    h, w = a.shape
    # work at a modest resolution (the model sees 64 px)
    s = 256 / max(h, w) * rng.uniform(0.6, 1.3)
    a = cv2.resize(a, (max(8, int(w * s * rng.uniform(0.85, 1.18))), max(8, int(h * s))), interpolation=cv2.INTER_AREA)
    h, w = a.shape
    # random crop (keep 70-100 % per side)
    ch, cw = int(h * rng.uniform(0.72, 1.0)), int(w * rng.uniform(0.72, 1.0))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    a = a[y0:y0 + ch, x0:x0 + cw]
    # rotation +-10 deg (radiographs), any small angle for others
    if rng.random() < 0.7:
        ang = rng.uniform(-10, 10)
        M = cv2.getRotationMatrix2D((a.shape[1] / 2, a.shape[0] / 2), ang, 1.0)
        border = float(rng.choice([0.0, float(np.median(a[:3])), 1.0]))
        a = cv2.warpAffine(a, M, (a.shape[1], a.shape[0]), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    # border padding (collimation / letterbox / scanner frame)
    if rng.random() < 0.3:
        t, b, l, r = (int(x) for x in rng.integers(0, max(2, int(0.15 * max(a.shape))), 4))
        a = cv2.copyMakeBorder(np.ascontiguousarray(a), t, b, l, r, cv2.BORDER_CONSTANT,
                               value=float(rng.choice([0.0, 1.0, rng.uniform()])))
    # intensity: contrast/brightness/gamma
    lo, hi = rng.uniform(0, 0.15), rng.uniform(0.85, 1.0)
    a = np.clip((a - lo) / (hi - lo), 0, 1) if rng.random() < 0.5 else a
    a = np.clip(a * rng.uniform(0.7, 1.2) + rng.uniform(-0.15, 0.15), 0, 1)
    a = np.power(a, rng.uniform(0.6, 1.6)).astype(np.float32)
    if rng.random() < 0.3:
        a = cv2.GaussianBlur(a, (0, 0), rng.uniform(0.3, 2.0))
    if rng.random() < 0.3:
        a = np.clip(a + rng.normal(0, rng.uniform(0.005, 0.05), a.shape).astype(np.float32), 0, 1)
    if rng.random() < 0.4:
        q = int(rng.integers(25, 95))
        ok, enc = cv2.imencode(".jpg", np.clip(a * 255, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
        a = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    inv = bool(rng.random() < 0.5)
    if inv:
        a = 1 - a
    return np.ascontiguousarray(a, np.float32), inv


def real_verdicts(gate) -> dict:
    real = {}
    for name, a in load_real_cxr().items():
        v = gate.classify(a)
        real[name] = dict(content=v.content, inverted=v.inverted,
                          probabilities={k: round(x, 4) for k, x in v.probabilities.items()},
                          inverted_probability=round(v.inverted_probability, 4), shape=list(a.shape))
        # also the negative, to show the inverted flag reacts
        vi = gate.classify(1 - a)
        real[name]["negative_input"] = dict(content=vi.content, inverted=vi.inverted,
                                            inverted_probability=round(vi.inverted_probability, 4))
    return real


def report_real(stem: str) -> None:
    sys.path.insert(0, str(HERE))
    from cacxr.imaging import viewgate as vg
    gate = vg.load_gate(HERE / f"{stem}.safetensors")
    real = real_verdicts(gate)
    fp = HERE / f"{stem}_figures.json"
    res = json.loads(fp.read_text()) if fp.exists() else {}
    res["real_cxr"] = real
    res["gate_version"] = gate.version
    fp.write_text(json.dumps(res, indent=2))
    print(json.dumps(real, indent=1))


# ================================================================== train
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--views", type=int, default=8, help="augmented views per val/test image")
    ap.add_argument("--exclude", nargs="*", default=[], help="sources to leave out, e.g. chexpert")
    ap.add_argument("--out", default="viewgate", help="output stem (weights, rule, figures)")
    ap.add_argument("--report-real", action="store_true", help="only (re)classify the real_cxr files")
    ap.add_argument("--eval-only", action="store_true",
                    help="skip training: load <out>.safetensors, redo rule choice on val, test, timing, real_cxr")
    args = ap.parse_args()
    if args.prepare:
        prepare()
        return
    if args.report_real:
        report_real(args.out)
        return

    import torch
    from torch import nn
    from safetensors.torch import save_file
    sys.path.insert(0, str(HERE))
    from cacxr.imaging import viewgate as vg

    torch.manual_seed(SEED); np.random.seed(SEED); random.seed(SEED)
    torch.set_num_threads(args.threads)
    rows = build_manifest(set(args.exclude), "manifest.csv" if args.out == "viewgate" else f"manifest_{args.out}.csv")
    C = list(vg.CONTENTS)
    imgs = {r["file"]: cv2.imread(str(DATA / r["file"]), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255 for r in rows}
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    counts = {s: {c: sum(r["label"] == c for r in split[s]) for c in C} for s in split}
    print("counts", counts)

    rng = np.random.default_rng(SEED)
    train_by_class = {c: [r for r in split["train"] if r["label"] == c] for c in C}

    def batch(n):
        xs, asp, ys, invs, invmask = [], [], [], [], []
        for i in range(n):
            c = C[i % 3]
            r = train_by_class[c][rng.integers(len(train_by_class[c]))]
            a, inv = augment(imgs[r["file"]], rng, c)
            x, la = vg.preprocess(a)
            xs.append(x); asp.append(la); ys.append(C.index(c)); invs.append(float(inv))
            invmask.append(1.0 if c != "not_radiograph" else 0.0)
        return (torch.from_numpy(np.stack(xs)[:, None]), torch.tensor(asp), torch.tensor(ys),
                torch.tensor(invs), torch.tensor(invmask))

    model = vg.GateNet()
    if args.eval_only:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(HERE / f"{args.out}.safetensors")), strict=False)
        args.steps = 0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(1, args.steps), pct_start=0.15)
    ce = nn.CrossEntropyLoss(label_smoothing=0.05)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        x, la, y, inv, m = batch(48)
        out = model(x, la)
        loss = ce(out[:, :3], y) + (bce(out[:, 3], inv) * m).sum() / m.sum().clamp(min=1)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    model.eval()

    # ---------------- evaluation views (deterministic) ----------------
    def eval_views(rs, seed):
        er = np.random.default_rng(seed)
        X, A, Y, INV, IMGID, CLEAN = [], [], [], [], [], []
        for j, r in enumerate(rs):
            base = imgs[r["file"]]
            views = [(base, False), (1 - base, True)]
            views += [augment(base, er, r["label"]) for _ in range(args.views)]
            for k, (a, inv) in enumerate(views):
                x, la = vg.preprocess(a)
                X.append(x); A.append(la); Y.append(C.index(r["label"])); INV.append(inv); IMGID.append(j)
                CLEAN.append(k == 0)
        with torch.inference_mode():
            out = model(torch.from_numpy(np.stack(X)[:, None]), torch.tensor(A))
        P = torch.softmax(out[:, :3], 1).numpy()
        Q = torch.sigmoid(out[:, 3]).numpy()
        return P, Q, np.array(Y), np.array(INV), np.array(IMGID), np.array(CLEAN)

    def decide(P, tn, tl):
        pred = np.zeros(len(P), int)
        nr = (P[:, 2] >= tn) & (P[:, 2] >= P[:, 1])
        lat = ~nr & (P[:, 1] >= tl)
        nr2 = ~nr & ~lat & (P[:, 2] >= tn)
        pred[nr | nr2] = 2
        pred[lat] = 1
        return pred

    def confusion(y, pred):
        M = np.zeros((3, 3), int)
        for a, b in zip(y, pred):
            M[a, b] += 1
        return M

    def figures(M):
        rec = {C[i]: (float(M[i, i] / M[i].sum()) if M[i].sum() else None) for i in range(3)}
        lost = float(1 - M[0, 0] / M[0].sum()) if M[0].sum() else None
        return rec, lost

    Pv, Qv, Yv, INVv, _, _ = eval_views(split["val"], SEED + 1)
    best = None
    grid = np.round(np.arange(0.05, 0.96, 0.025), 3)
    for tn in grid:
        for tl in grid:
            M = confusion(Yv, decide(Pv, tn, tl))
            rec, lost = figures(M)
            ok = lost <= 0.02
            score = (rec["lateral"] or 0) + (rec["not_radiograph"] or 0)
            key = (ok, score, -lost)
            if best is None or key > best[0]:
                best = (key, float(tn), float(tl), M)
    _, t_nr, t_lat, Mval = best
    # inverted threshold: on val radiograph views
    rad = Yv != 2
    t_inv, best_acc = 0.5, -1
    for t in np.arange(0.1, 0.91, 0.05):
        acc = float(((Qv[rad] >= t) == INVv[rad]).mean())
        if acc > best_acc + 1e-9:
            best_acc, t_inv = acc, float(round(t, 3))
    print("rule", t_nr, t_lat, t_inv, "val", Mval.tolist())

    Pt, Qt, Yt, INVt, IDt, CLt = eval_views(split["test"], SEED + 2)
    pred_t = decide(Pt, t_nr, t_lat)
    Mt = confusion(Yt, pred_t)
    Mt_clean = confusion(Yt[CLt], pred_t[CLt])
    radt = Yt != 2
    inv_acc_t = float(((Qt[radt] >= t_inv) == INVt[radt]).mean()) if radt.any() else None
    inv_acc_t_all = float(((Qt >= t_inv) == INVt).mean())
    Mt_argmax = confusion(Yt, Pt.argmax(1))
    # per-source recall on test (all views) for the true class of each source
    per_source = {}
    for j, r in enumerate(split["test"]):
        sel = IDt == j
        k = (r["label"], r["source"])
        d = per_source.setdefault(k, [0, 0, 0])
        d[0] += int((pred_t[sel] == C.index(r["label"])).sum()); d[1] += int(sel.sum()); d[2] += 1
    per_source = {f"{a}/{b}": dict(correct_views=v[0], views=v[1], images=v[2], recall=round(v[0] / v[1], 4))
                  for (a, b), v in sorted(per_source.items())}
    # per-image majority over its views
    maj = []
    for j, r in enumerate(split["test"]):
        sel = IDt == j
        maj.append(np.bincount(pred_t[sel], minlength=3).argmax())
    Mt_major = confusion(np.array([C.index(r["label"]) for r in split["test"]]), np.array(maj))
    errors = [dict(file=r["file"], label=r["label"], pred_clean=C[int(pred_t[(IDt == j) & CLt][0])],
                   p_clean=[round(float(x), 3) for x in Pt[(IDt == j) & CLt][0]])
              for j, r in enumerate(split["test"]) if pred_t[(IDt == j) & CLt][0] != C.index(r["label"])]

    # ---------------- write weights ----------------
    sd = {k: v.detach().clone().float().contiguous() for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    rule = dict(t_not_radiograph=t_nr, t_lateral=t_lat, t_inverted=t_inv,
                description="not_radiograph if p_nr>=t_nr (and p_nr>=p_lat); else lateral if p_lat>=t_lat; "
                            "else not_radiograph if p_nr>=t_nr; else frontal. inverted if p_inv>=t_inverted.")
    meta = dict(rule=json.dumps(rule), contents=json.dumps(C), input_size=str(vg.INPUT_SIZE),
                format="viewgate-1", seed=str(SEED))
    wpath = HERE / f"{args.out}.safetensors"
    save_file(sd, str(wpath), metadata=meta)
    os.chmod(wpath, 0o644)
    (HERE / f"{args.out}_rule.json").write_text(json.dumps(rule, indent=2))
    vg.load_gate.cache_clear()
    gate = vg.load_gate(wpath)

    # ---------------- robustness: test images upscaled to 2048 px (exercises the decimation path) -------
    up_pred, up_y = [], []
    for r in split["test"]:
        a = imgs[r["file"]]
        s_ = 2048 / max(a.shape)
        big = cv2.resize(a, (round(a.shape[1] * s_), round(a.shape[0] * s_)), interpolation=cv2.INTER_LINEAR)
        up_pred.append(C.index(gate.classify(big).content)); up_y.append(C.index(r["label"]))
    Mt_up = confusion(np.array(up_y), np.array(up_pred))

    # ---------------- timing on 1 thread ----------------
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    tr = np.random.default_rng(0)
    timing = {}
    for (h, w) in [(128, 128), (512, 512), (2048, 2048), (3000, 2500), (4000, 4000), (4000, 1000)]:
        im = tr.random((h, w), dtype=np.float32)
        gate.classify(im)
        ts = []
        for _ in range(30):
            t1 = time.perf_counter(); gate.classify(im); ts.append(time.perf_counter() - t1)
        timing[f"{h}x{w}"] = dict(median_ms=round(1000 * float(np.median(ts)), 3),
                                  p95_ms=round(1000 * float(np.percentile(ts, 95)), 3),
                                  max_ms=round(1000 * float(np.max(ts)), 3))
    print("timing", timing)

    # ---------------- real_cxr verdicts (report only) ----------------
    real = real_verdicts(gate)
    print(json.dumps(real, indent=1))

    def pack(M):
        rec, lost = figures(M)
        return dict(matrix=M.tolist(), rows_true=C, cols_pred=C, recall=rec, frontal_lost=lost)

    res = dict(
        gate_version=gate.version, seed=SEED, steps=args.steps, n_params=int(sum(v.numel() for v in sd.values())),
        weights_bytes=wpath.stat().st_size,
        counts_images=counts,
        counts_groups={s: {c: len({r["group"] for r in split[s] if r["label"] == c}) for c in C} for s in split},
        eval_views_per_image=2 + args.views,
        rule=rule,
        val=pack(Mval),
        test_all_views=pack(Mt), test_clean_views=pack(Mt_clean), test_all_views_argmax=pack(Mt_argmax),
        test_per_image_majority=pack(Mt_major), test_clean_upscaled_2048=pack(Mt_up), test_per_source=per_source, test_clean_errors=errors,
        test_inverted_accuracy_radiographs=inv_acc_t, test_inverted_accuracy_all=inv_acc_t_all,
        targets=dict(lateral_recall=0.95, not_radiograph_recall=0.90, frontal_lost_max=0.03),
        timing_1thread=timing, real_cxr=real,
    )
    (HERE / f"{args.out}_figures.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("val", "test_all_views", "test_clean_views", "test_inverted_accuracy_radiographs")}, indent=1))


if __name__ == "__main__":
    main()
