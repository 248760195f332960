"""Figures of the mcu target (TensorFlow Lite Micro), measured in one run and printed.

    python benchmarks/mcu.py [--out DIR] [--samples N]

1. DS-CNN keyword spotting (examples:dscnn, 1x1x49x10 MFCC input) through `edgex convert
   --target mcu`: TFLM vs LiteRT's int8 kernels (share of outputs within 1 LSB, target >= 99%),
   the minimum-arena search time (target < 5 s), and the searched arena against TFLM's own
   allocation record (target within 10%); plus parity against torch.
2. The same DS-CNN for an Ethos-U55 board (vela): SRAM, flash, NPU cycles, inferences/s.
3. The shipped digits example (examples:digits) against the nrf52840 profile (Cortex-M4F,
   256 KB RAM, 1 MB flash): the fit verdict and its headroom.

Exits 1 when a figure misses its target, so CI can run it; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _row(report, target: str = "mcu"):
    row = report.targets[target]
    if row.status not in ("passed", "failed"):
        raise SystemExit(f"{target}: {row.status}: {'; '.join(row.messages)}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the artifacts here (default: a temporary folder)")
    parser.add_argument("--samples", type=int, default=64, help="parity samples per model")
    args = parser.parse_args(argv)

    from edgex.core import api

    out = args.out or Path(tempfile.mkdtemp(prefix="edgex-bench-mcu-"))
    checks: list[tuple[str, bool]] = []

    def figure(label: str, value: str, ok: bool | None = None) -> None:
        mark = "" if ok is None else ("  [ok]" if ok else "  [MISSED]")
        print(f"  {label:<46} {value}{mark}")
        if ok is not None:
            checks.append((label, ok))

    # 1. DS-CNN on TFLM --------------------------------------------------------------------
    print("DS-CNN keyword spotting (examples:dscnn, 1x1x49x10 MFCC), --target mcu")
    start = time.perf_counter()
    report = api.convert("examples:dscnn", ["mcu"], out=out / "dscnn", samples=args.samples)
    wall = time.perf_counter() - start
    row = _row(report)
    parity, details = row.parity, row.details
    arena = details["memory"]["arena"]
    litert = details["litert_comparison"]
    figure("conversion + validation wall time", f"{wall:.1f} s")
    figure("model bytes (flash for the weights)", f"{details['memory']['flash']['model_bytes']:,}")
    figure("parity vs torch (output LSB tolerance)", f"{'passed' if parity.passed else 'FAILED'}: max |err| {parity.max_abs:.4g} "
           f"<= {parity.tolerance.atol:.4g}, SQNR {parity.sqnr_db:.1f} dB, top-1 {parity.top1_agreement}", parity.passed)
    if "error" in litert:
        figure("TFLM vs LiteRT int8", litert["error"], False)
    else:
        within = litert["fraction_within_1_lsb"]
        figure("TFLM vs LiteRT: outputs within 1 LSB", f"{within * 100:.2f}% of {litert['outputs_compared']:,} "
               f"({litert['outputs_differing']} differ, max {litert['max_lsb_difference']} LSB; {litert['backend']})", within >= 0.99)
    figure("minimum-arena search (binary search) time", f"{arena['search_seconds']:.3f} s ({arena['probes']} interpreter builds)", arena["search_seconds"] < 5.0)
    agreement = arena["minimum_bytes"] / arena["recorded_bytes"]
    figure("arena: binary search vs TFLM allocation record", f"{arena['minimum_bytes']:,} B vs {arena['recorded_bytes']:,} B "
           f"(ratio {agreement:.4f}; head {arena['recorded_head_bytes']:,} + tail {arena['recorded_tail_bytes']:,})", abs(agreement - 1) <= 0.10)

    # 2. DS-CNN for an Ethos-U55 board --------------------------------------------------------
    print("\nDS-CNN for alif-e7-he (Cortex-M55 + Ethos-U55-128 at 160 MHz), vela")
    report = api.convert("examples:dscnn", ["mcu"], out=out / "dscnn-ethos", samples=8, options={"device": "alif-e7-he"})
    row = _row(report)
    ethos = row.details.get("ethos_u")
    if ethos is None:
        figure("vela", "; ".join(row.messages) or "no Ethos-U report", False)
    else:
        figure("vela SRAM / flash", f"{ethos['sram_bytes']:,} B / {ethos['flash_bytes']:,} B")
        figure("NPU cycles / inference time", f"{ethos['cycles_npu']:,} cycles / {ethos['inference_ms']:.3f} ms at {ethos['npu_clock_mhz']:g} MHz")
        figure("inferences per second (vela estimate)", f"{ethos['inferences_per_second']:,.0f}")
        fallback = ", ".join(f"{c['op']} ({c['reason']})" for c in ethos["cpu_fallback"]) or "none"
        figure("operators on NPU / CPU", f"{ethos['npu_operators']} / {ethos['cpu_operators']}; CPU fallback: {fallback}")
        figure("parity (int8 model before vela, on TFLM)", "passed" if row.status == "passed" else "FAILED", row.status == "passed")

    # 3. digits on a 256 KB / 1 MB Cortex-M4 ----------------------------------------------------
    print("\nexamples:digits on nrf52840 (Cortex-M4F, 256 KB RAM, 1 MB flash)")
    report = api.convert("examples:digits", ["mcu"], out=out / "digits", samples=args.samples, options={"device": "nrf52840"})
    row = report.targets["mcu"]
    fit = row.details.get("fit")
    if fit is None:
        figure("fit", f"{row.status}: {'; '.join(row.messages)}", False)
    else:
        figure("fit verdict", next((m for m in row.messages if m.startswith(("fits", "does not fit"))), str(fit["fits"])), bool(fit["fits"]))
        figure("parity vs torch", row.status, row.status == "passed")
        if row.accuracy:
            figure("test accuracy torch -> TFLM", f"{row.accuracy['reference'] * 100:.2f}% -> {row.accuracy['artifact'] * 100:.2f}% "
                   f"({row.accuracy['samples']} labelled digits)")

    print(f"\nartifacts and report.json files: {out}")
    missed = [label for label, ok in checks if not ok]
    print("all figures reached" if not missed else f"MISSED: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
