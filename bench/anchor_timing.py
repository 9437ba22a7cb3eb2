"""The performance model's anchors on a real GPU: each anchor kernel (bench/anchors) timed with
``triton.testing.do_bench`` at its published size, beside its FORECAST and its published time,
so that the first GPU run also checks the model (bench/gpu_check.sh runs this).

    python bench/anchor_timing.py --csv anchors.csv --markdown anchors.md
    python bench/anchor_timing.py --dry-run      # no GPU: forecast one small anchor, no timing

Per anchor the measured time is the best over the configs its forecast considers (the
published run's config where it was fixed, else the autotune set), as an autotuner picks;
configs the GPU refuses are skipped. The forecast is for the device the anchor was published
on (an H100); on another card (an H200 here) the ratio measured / published says how far the
card differs, and measured / forecast with ``--device`` of this card checks the model on it.
On an AMD GPU (a ROCm build of torch) the anchors are timed the same way, through Triton's HIP
backend: the table then says that its forecasts and published times are NVIDIA's (no AMD model
is calibrated), and the measured times are AMD Triton numbers a future AMD model can use.
"""

import argparse
import csv
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _fill(args):
    """The launch's tensors moved to the GPU with random values (the kernels read them)."""
    import torch

    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            t = torch.randn(a.shape, device="cuda", dtype=torch.float32)
            if a.dtype.is_floating_point and a.element_size() == 1:
                t = t.clamp(-8, 8)
            out.append(t.to(a.dtype) if a.is_contiguous() else
                       t.to(a.dtype).t().contiguous().t())
        else:
            out.append(a)
    return out


def measure(anchor):
    """(best ms over the anchor's configs, its config) on the current CUDA device."""
    import triton

    best = None
    for cfg, kernel, args, kwargs, grid, _ in anchor.launches():
        real = _fill(args)
        def run(kernel=kernel, grid=grid, real=real, kwargs=kwargs):
            kernel[grid](*real, **kwargs)

        try:
            ms = triton.testing.do_bench(run, warmup=25, rep=100)
        except Exception as exc:  # out of resources for this config: an autotuner skips it
            print(f"  {anchor.name} {cfg}: skipped ({type(exc).__name__})", file=sys.stderr)
            continue
        if best is None or ms < best[0]:
            best = (ms, cfg)
    return best


def gpu_note():
    """The table's first line on a GPU: the card, and on AMD what the ratios are not."""
    import torch

    name = torch.cuda.get_device_name(0)
    if getattr(torch.version, "hip", None):
        arch = (getattr(torch.cuda.get_device_properties(0), "gcnArchName", "") or "?")
        return (f"Measured on **{name}** ({arch.split(':')[0]}, HIP {torch.version.hip}): the "
                "published times and the forecasts are NVIDIA's (no AMD model is calibrated); "
                "measured ÷ forecast is no check of the model here.")
    return f"Measured on **{name}** (CUDA {torch.version.cuda})."


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--csv", help="write the rows here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--device", default=None, help="forecast for this card (h100, h200; "
                                                  "default: the card each anchor names)")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: forecast the first memory-bound anchor only, time nothing")
    args = p.parse_args(argv)
    from dataclasses import replace

    from perfmodel import calibration

    anchors = calibration.ANCHORS
    if args.dry_run:
        anchors = [next(a for a in anchors if a.module == "rowwise")]
    if args.device:
        anchors = [replace(a, device=args.device) for a in anchors]
    rows = []
    for anchor in anchors:
        forecast = calibration.table(anchors=(anchor,))[0]
        row = {"anchor": anchor.name, "device": anchor.device,
               "published_us": round(anchor.published_s * 1e6, 2),
               "forecast_us": round(forecast["forecast_us"], 2), "measured_us": None,
               "measured_config": None}
        if not args.dry_run:
            best = measure(anchor)
            if best is not None:
                row["measured_us"] = round(best[0] * 1e3, 2)
                row["measured_config"] = " ".join(f"{k}={v}" for k, v in best[1].items())
        rows.append(row)
        print(row, flush=True)
    lines = [] if args.dry_run else [gpu_note(), ""]
    lines += ["| anchor | published µs | FORECAST µs | measured µs | measured ÷ forecast | "
              "measured ÷ published |", "|---|---|---|---|---|---|"]
    for r in rows:
        m = r["measured_us"]
        ratios = [f"{m / r[key]:.2f}" if m else "-" for key in ("forecast_us", "published_us")]
        lines.append(f"| {r['anchor']} | {r['published_us']} | {r['forecast_us']} | "
                     f"{m if m is not None else '-'} | {ratios[0]} | {ratios[1]} |")
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
