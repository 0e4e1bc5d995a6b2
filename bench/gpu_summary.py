"""bench/gpu.sh's summary: bench/learn.py's rows and bench/train_throughput.py's figures against the issue's
targets, as one markdown table each.

    python bench/gpu_summary.py LEARN_JSON THROUGHPUT_JSON LEARN_SECONDS TOTAL_SECONDS
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.shapes_world.scenes import QUESTION_TYPES  # noqa: E402

LEARN_TARGET = 0.90  # held-out accuracy of every preset on a GPU-sized shapes world
PACKED_OVER_PADDED_TARGET = 2.5  # useful tokens/s
MFU_TARGET = 0.45  # Loom packed, 1B LLM + frozen ViT-L/336


def read(path: str) -> object | None:
    file = Path(path)
    return json.loads(file.read_text()) if file.exists() else None


def learn_table(rows: list[dict]) -> list[str]:
    lines = ["| preset | held-out accuracy | " + " | ".join(QUESTION_TYPES) + " | blind LLM | s | target |",
             "|---" * (5 + len(QUESTION_TYPES)) + "|"]
    for r in rows:
        kinds = " | ".join(f"{r['by_question_type'].get(t, float('nan')):.2f}" for t in QUESTION_TYPES)
        blind = r.get("llm_pretraining", {}).get("accuracy_before_stages")
        lines.append(f"| {r['preset']} | {r['accuracy']:.3f} | {kinds} | {'-' if blind is None else f'{blind:.3f}'} | "
                     f"{r['seconds']:.0f} | {'met' if r['accuracy'] >= LEARN_TARGET else 'missed'} (≥ {LEARN_TARGET}) |")
    return lines


def throughput_table(result: dict) -> list[str]:
    lines = [f"device: {result['device']}, shape {result['shape']}, attention {result['attention']}, "
             f"{result['llm_and_projector_parameters'] / 1e9:.2f}B LLM + projector parameters", "",
             "| setting | useful tokens/s | MFU | peak GiB |", "|---|---|---|---|"]
    for name, s in result["settings"].items():
        lines.append(f"| {name} | {s['tokens_per_s']:.0f} | {s['mfu']:.1%} | {s.get('peak_memory_gib', '-')} |")
    ratio, mfu = result["packed_over_padded"], result["settings"]["loom packed"]["mfu"]
    lines += ["", f"packed / padded: {ratio:.2f}x ({'met' if ratio >= PACKED_OVER_PADDED_TARGET else 'missed'}, "
                  f"target ≥ {PACKED_OVER_PADDED_TARGET}x); Loom packed MFU {mfu:.1%} "
                  f"({'met' if mfu >= MFU_TARGET else 'missed'}, target ≥ {MFU_TARGET:.0%})"]
    if "loom_packed_over_reference_packed" in result:
        lines.append(f"Loom packed / transformers' LlavaForConditionalGeneration packed: "
                     f"{result['loom_packed_over_reference_packed']:.2f}x")
    return lines


def main(argv: list[str]) -> int:
    learn_json, throughput_json, learn_s, total_s = argv
    rows, throughput = read(learn_json), read(throughput_json)
    out = [f"## bench/learn.py ({learn_s} s)", ""]
    out += learn_table(rows) if rows else ["no rows: bench/learn.py wrote no table"]
    out += ["", "## bench/train_throughput.py", ""]
    out += throughput_table(throughput) if throughput else ["no figures: bench/train_throughput.py wrote none"]
    out += ["", f"gpu.sh: {total_s} s in all"]
    print("\n".join(out))
    return 0 if rows and throughput else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
