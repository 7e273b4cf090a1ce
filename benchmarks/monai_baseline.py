"""The MONAI tutorial baseline: a plain MONAI training script, trained for a wall-clock budget.

What a MONAI user writes from the tutorials (spleen / BraTS 3D segmentation), as a function and a command:

- ``UNet(spatial_dims=3, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm=BATCH)``;
- ``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd("RAS")``, ``Spacingd`` to ``--spacing`` mm (2 mm by
  default; ``--spacing none`` keeps each scan's own voxels), the label values mapped to 0..K-1
  (``MapLabelValued``, e.g. 0/1/2/4 -> 0/1/2/3), ``NormalizeIntensityd(nonzero, channel_wise)``; for training
  ``SpatialPadd`` to the crop size, ``RandCropByPosNegLabeld`` (64³, pos 1 / neg 1, ``--samples`` crops per
  scan) and ``RandFlipd`` on each axis;
- ``DiceCELoss(to_onehot_y=True, softmax=True)``, ``Adam(lr=1e-3)``, a plain ``Dataset`` (every scan loaded and
  resampled again at every draw: no cache) and a ``DataLoader`` (batch 2, shuffled, ``num_workers=0``);
- trained until the wall-clock budget is spent: the clock starts when ``run_monai_baseline`` is called (it does
  the heavy imports, lists the data, builds the net, loads and resamples scans), and no new iteration starts
  when the last one's duration would take it past the budget;
- then each held-out scan (``imagesTs``) is segmented by ``sliding_window_inference`` (64³ windows, overlap
  0.25, the tutorials' defaults), the softmax resampled back to the scan's own grid by ``Invertd`` (undoing the
  spacing and the orientation), the argmax mapped back to the data set's label values and written as a NIfTI
  label map with the scan's affine (``OUT/predictions/CASE.nii.gz``).

The case lists come from medseg3d's data set reader (MSD or nnU-Net v2 raw layout); everything else is MONAI.

    python benchmarks/monai_baseline.py DATASET --budget 180 --out /tmp/monai_run [--spacing 2] [--seed 0]

prints the iterations done, the training and inference seconds and the predictions, and writes
``OUT/result.json`` with the same.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def _image_entry(case: dict):
    return case["image"][0] if len(case["image"]) == 1 else list(case["image"])


def run_monai_baseline(dataset: str | Path, budget_s: float, out: str | Path, *, spacing: float | None = 2.0,
                       patch: int = 64, batch_size: int = 2, samples: int = 2, lr: float = 1e-3, seed: int = 0,
                       overlap: float = 0.25, sw_batch_size: int = 4, started: float | None = None) -> dict:
    """Train for ``budget_s`` seconds of wall clock (counted from ``started``, a ``time.monotonic()`` value, or
    from this call) and segment the held-out scans into ``out/predictions``. Returns ``{"iterations",
    "patches", "train_s", "infer_s", "infer_s_per_scan", "predictions": {case: path}, ...}``."""
    t0 = time.monotonic() if started is None else started
    import nibabel as nib
    import numpy as np
    import torch
    from monai import transforms as mt
    from monai.data import DataLoader, Dataset
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet
    from monai.utils import set_determinism

    from medseg3d.data.datasets import load_dataset
    from medseg3d.errors import MedsegError
    from medseg3d.io.scan import atomic_write

    out = Path(out)
    info = load_dataset(dataset)
    if not info.test:
        raise MedsegError(f"{dataset}: no held-out scans (imagesTs or the dataset.json 'test' list) to segment")
    values = list(info.labels.values())
    classes = list(range(len(values)))
    set_determinism(seed=seed)

    keys = ["image", "label"]
    roi = (patch,) * 3
    space = [mt.Spacingd(keys, pixdim=(spacing,) * 3, mode=("bilinear", "nearest"))] if spacing else []
    train_tf = mt.Compose([
        mt.LoadImaged(keys, image_only=True), mt.EnsureChannelFirstd(keys), mt.Orientationd(keys, axcodes="RAS"),
        *space, mt.MapLabelValued("label", orig_labels=values, target_labels=classes),
        mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        mt.SpatialPadd(keys, spatial_size=roi),
        mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=roi, pos=1, neg=1, num_samples=samples,
                                  image_key="image", image_threshold=0),
        *[mt.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)],
    ])
    train_files = [{"image": _image_entry(c), "label": c["label"]} for c in info.training]
    loader = DataLoader(Dataset(train_files, train_tf), batch_size=batch_size, shuffle=True, num_workers=0)

    model = UNet(spatial_dims=3, in_channels=len(info.channels), out_channels=len(classes),
                 channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm=Norm.BATCH)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    iterations, patches, losses = 0, 0, []
    model.train()
    prev = time.monotonic()
    done = prev - t0 > budget_s
    while not done:
        for batch in loader:  # the scans are loaded and resampled here, inside the clock
            x, y = batch["image"], batch["label"]
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            iterations += 1
            patches += x.shape[0]
            now = time.monotonic()
            step, prev = now - prev, now  # this iteration, data loading included
            if now - t0 + step > budget_s:  # the next one would end past the budget
                done = True
                break
    train_s = time.monotonic() - t0

    # ---- inference on the held-out scans, back on each scan's own grid
    t1 = time.monotonic()
    infer_tf = mt.Compose([
        mt.LoadImaged("image", image_only=True), mt.EnsureChannelFirstd("image"),
        mt.Orientationd("image", axcodes="RAS"),
        *([mt.Spacingd("image", pixdim=(spacing,) * 3, mode="bilinear")] if spacing else []),
        mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ])
    invert = mt.Invertd("pred", transform=infer_tf, orig_keys="image", nearest_interp=False, to_tensor=True)
    model.eval()
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    predictions, per_scan = {}, []
    lut = np.asarray(values)
    for case in info.test:
        s = time.monotonic()
        data = infer_tf({"image": _image_entry(case)})
        with torch.no_grad():
            logits = sliding_window_inference(data["image"][None], roi, sw_batch_size, model, overlap=overlap)
        data["pred"] = torch.softmax(logits[0], 0)
        data = invert(data)
        labels = lut[torch.argmax(data["pred"], 0).cpu().numpy()]
        ref = nib.load(case["image"][0])
        if labels.shape != tuple(ref.shape[:3]):
            raise MedsegError(f"{case['image'][0]}: the inverted prediction has shape {labels.shape}, the scan "
                              f"{tuple(ref.shape[:3])}")
        img = nib.Nifti1Image(labels.astype(np.uint8 if lut.max() < 256 else np.int16), ref.affine)
        img.set_qform(ref.affine, code=int(ref.header["qform_code"]) or 1)
        img.set_sform(ref.affine, code=int(ref.header["sform_code"]) or 1)
        path = pred_dir / f"{case['id']}.nii.gz"
        atomic_write(path, lambda tmp, img=img: nib.save(img, tmp))
        predictions[case["id"]] = str(path)
        per_scan.append(time.monotonic() - s)
    infer_s = time.monotonic() - t1
    result = {"method": "monai", "dataset": str(dataset), "budget_s": budget_s, "iterations": iterations,
              "patches": patches, "train_s": train_s, "infer_s": infer_s,
              "infer_s_per_scan": float(np.mean(per_scan)), "final_loss": float(np.mean(losses[-10:]))
              if losses else math.nan, "spacing_mm": spacing, "patch": patch, "batch_size": batch_size,
              "samples_per_scan": samples, "threads": torch.get_num_threads(), "predictions": predictions}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "result.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    return result


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="data set folder (MSD or nnU-Net v2 raw, with held-out scans in imagesTs)")
    ap.add_argument("--budget", type=float, required=True, help="training wall clock in seconds")
    ap.add_argument("--out", required=True, help="output folder: predictions/CASE.nii.gz and result.json")
    ap.add_argument("--spacing", default="2", help="target spacing in mm, or 'none' (default 2)")
    ap.add_argument("--patch", type=int, default=64, help="crop size (default 64)")
    ap.add_argument("--samples", type=int, default=2, help="crops per scan per draw (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from medseg3d.errors import MedsegError

    spacing = None if args.spacing.lower() == "none" else float(args.spacing)
    try:
        r = run_monai_baseline(args.dataset, args.budget, args.out, spacing=spacing, patch=args.patch,
                               samples=args.samples, seed=args.seed, started=started)
    except MedsegError as e:
        sys.exit(f"error: {e}")
    print(f"MONAI baseline: {r['iterations']} iterations ({r['patches']} patches) in {r['train_s']:.1f}s "
          f"(budget {args.budget:g}s), final loss {r['final_loss']:.4f}; inference {r['infer_s']:.1f}s "
          f"({r['infer_s_per_scan']:.1f}s per scan)")
    for case, path in r["predictions"].items():
        print(f"  {case}: {path}")


if __name__ == "__main__":
    main()
