"""Anchor kernels of the performance model: public kernels' algorithms, written here (the same
tiling, program order and configs as the published kernels, not their code), whose H100/H200
times are published. ``perfmodel.calibration`` forecasts them and compares (the table, with
sources: ``bench/RESULTS.md``). Each module gives ``cases()``: the published problems as
``AnchorCase`` objects whose ``launches(config)`` builds the kernel's arguments on the CPU."""
