"""`lowbit inspect ARTIFACT`: a readable summary of an artifact.

Plain text with fixed-width columns (no rich tables: the output is grep-able, stable for tests and does
not wrap or truncate with the terminal width). Sections: the manifest (format, versions, device, meta,
file table), then whichever of model.yaml, report.json (with the imported checkpoint's format), tuning.json
and kernels.json the artifact has. Fields missing
from report.json are left out; a malformed section prints what is wrong instead of failing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lowbit.artifact.reader import Artifact, open_artifact
from lowbit.artifact.writer import KERNELS_INDEX

MODEL_YAML = "model.yaml"
REPORT_JSON = "report.json"
TUNING_JSON = "tuning.json"


def human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return str(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # unreachable


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    """Rows as fixed-width columns (columns in `right` right-aligned), indented by two spaces."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  " + "  ".join(parts).rstrip())
    return out


def _manifest_section(a: Artifact) -> list[str]:
    m = a.manifest
    total = sum(f.bytes for f in m.files.values())
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items() if v is not None)
    d = m.device
    cuda = d.get("cuda")
    cuda_text = f"{cuda['name']} (sm {cuda['capability']}, x{cuda['count']})" if cuda else "none"
    lines = [
        f"lowbit artifact {a.root}",
        f"  format {m.format_version}, created {m.created}, {len(m.files)} files, {human_bytes(total)}",
        f"  compiled with: {versions}",
        f"  device: {d['os']} {d['machine']}, {d['cpu']} ({d['cores']} cores), isa: {' '.join(d['isa']) or '-'}, "
        f"cuda: {cuda_text}",
    ]
    for k, v in m.meta.items():
        lines.append(f"  {k}: {v if isinstance(v, (str, int, float)) else json.dumps(v)}")
    lines += ["", "files"]
    rows = [(rel, human_bytes(f.bytes), f.sha256[:12]) for rel, f in sorted(m.files.items())]
    lines += table(["path", "size", "sha256"], rows, right=[1])
    return lines


def _flatten(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Scalars of a YAML document as (dotted key, value), two levels deep; deeper things summarised."""
    out: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and depth < 2:
                out += _flatten(v, key + ".", depth + 1)
            elif isinstance(v, Mapping):
                out.append((key, f"{{{len(v)} keys}}"))
            elif isinstance(v, list):
                short = json.dumps(v, default=str)
                out.append((key, short if len(short) <= 60 else f"[{len(v)} items]"))
            else:
                out.append((key, str(v)))
    else:
        out.append((prefix or "(document)", str(obj)[:80]))
    return out


def _model_section(a: Artifact) -> list[str]:
    doc = a.read_yaml(MODEL_YAML)
    pairs = _flatten(doc)
    width = max((len(k) for k, _ in pairs), default=0)
    return (
        ["", "model.yaml"]
        + [f"  {k.ljust(width)}  {v}" for k, v in pairs[:60]]
        + ([f"  ... {len(pairs) - 60} more"] if len(pairs) > 60 else [])
    )


def _report_section(a: Artifact, max_modules: int) -> list[str]:
    r = a.read_json(REPORT_JSON)
    if not isinstance(r, Mapping):
        return ["", "compile report", f"  report.json holds a {type(r).__name__}, not an object"]
    lines = ["", "compile report"]
    phases = r.get("phases")
    if isinstance(phases, list) and phases:
        total = sum(
            p.get("seconds", 0) for p in phases if isinstance(p, Mapping) and isinstance(p.get("seconds"), (int, float))
        )
        rows = []
        for p in phases:
            if not isinstance(p, Mapping):
                continue
            s = p.get("seconds")
            share = f"{100 * s / total:.0f}%" if isinstance(s, (int, float)) and total > 0 else ""
            rows.append((p.get("name", "?"), _num(s, ".2f"), share))
        rows.append(("total", f"{total:.2f}", ""))
        lines += table(["phase", "seconds", "share"], rows, right=[1, 2])
    src = r.get("source_quantization")
    if isinstance(src, Mapping):
        lines.append(
            f"  imported checkpoint: {src.get('description', src.get('quant_method', '?'))}, "
            f"{src.get('modules', '?')} quantized modules as stored, from {src.get('checkpoint', '?')}"
        )
    facts = []
    if "bits_per_weight" in r:
        facts.append(f"bits per weight: {_num(r['bits_per_weight'], '.3f')}")
    if "params" in r:
        facts.append(f"params: {_num(r['params'], ',')}")
    if "weight_bytes" in r:
        facts.append(f"weight bytes: {human_bytes(r['weight_bytes'])}")
    if facts:
        lines.append("  " + "   ".join(facts))
    mem = r.get("memory_estimate")
    if isinstance(mem, Mapping):
        parts = [
            f"weights {human_bytes(mem['weights_bytes'])}" if "weights_bytes" in mem else "",
            f"kv cache {human_bytes(mem['kv_cache_bytes_per_token'])}/token"
            if "kv_cache_bytes_per_token" in mem
            else "",
            f"activations {human_bytes(mem['activation_bytes'])}" if "activation_bytes" in mem else "",
            f"total {human_bytes(mem['total_bytes'])}" if "total_bytes" in mem else "",
        ]
        lines.append("  memory estimate: " + ", ".join(p for p in parts if p))
    acc = r.get("accuracy")
    if isinstance(acc, Mapping):
        top1 = acc.get("top1_agreement")
        top1_text = f"{100 * top1:.2f}%" if isinstance(top1, (int, float)) else str(top1)
        lines.append(
            f"  accuracy vs {acc.get('reference', 'unquantized')} "
            f"({_num(acc.get('tokens', '?'), ',')} held-out tokens): "
            f"logit KL divergence {_num(acc.get('kl_divergence'), '.4g')}, top-1 agreement {top1_text}"
        )
    modules = r.get("modules")
    if isinstance(modules, list) and modules:
        shown = modules[:max_modules]
        module_rows = [
            (
                m.get("name", "?"),
                _spec_text(m.get("spec")),
                _num(m.get("bits_per_weight", ""), ".3f"),
                _num(m.get("error", ""), ".3g"),
            )
            for m in shown
            if isinstance(m, Mapping)
        ]
        more = f" (first {len(shown)} of {len(modules)})" if len(modules) > len(shown) else ""
        lines.append(f"  modules{more}:")
        lines += ["  " + x for x in table(["module", "spec", "bits/weight", "error"], module_rows, right=[2, 3])]
    return lines


def _spec_text(spec: Any) -> str:
    if isinstance(spec, Mapping):
        return " ".join(f"{k}={v}" for k, v in spec.items())
    return str(spec) if spec is not None else ""


def _tuning_section(a: Artifact) -> list[str]:
    t = a.read_json(TUNING_JSON)
    if not isinstance(t, Mapping):
        return ["", "tuning", f"  tuning.json holds a {type(t).__name__}, not an object"]
    records = [d for d in t.get("records", []) if isinstance(d, Mapping)]
    lines = [
        "",
        f"tuning (policy {t.get('policy', '?')}, budget {_num(t.get('budget_s', '?'), 'g')} s, backend "
        f"{t.get('backend', '?')}, device {t.get('device', '?')}): {len(records)} tuned configs pinned",
    ]

    def ms(v: Any) -> str:
        return _num(v, ".4g") if v is not None else "-"

    rows = []
    for d in records:
        lo, hi = [*d.get("m_range", ()), "?", "?"][:2]
        best, default = d.get("best_ms"), d.get("default_ms")
        gain = "-"
        if isinstance(best, (int, float)) and isinstance(default, (int, float)) and best > 0:
            gain = f"{default / best:.2f}x"
        cfg = d.get("config", {})
        text = " ".join(f"{k}={v}" for part in ("constants", "options") for k, v in dict(cfg.get(part, {})).items())
        rows.append((d.get("kernel", "?"), f"{d.get('N', '?')}x{d.get('K', '?')}", f"({lo}, {hi}]", text,
                     ms(best), ms(default), gain, d.get("source", "?")))  # fmt: skip
    if rows:
        lines += table(["kernel", "NxK", "M", "config", "ms", "default ms", "speedup", "from"], rows, right=[4, 5, 6])
    return lines


def _kernels_section(a: Artifact) -> list[str]:
    index = a.read_json(KERNELS_INDEX)
    kernels = index.get("kernels", []) if isinstance(index, Mapping) else []
    rows = [
        (k.get("name", "?"), k.get("backend", "?"), _spec_text(k.get("options")), str(k.get("key", ""))[:12])
        for k in kernels
        if isinstance(k, Mapping)
    ]
    return ["", f"kernels ({len(rows)})", *table(["kernel", "backend", "options", "key"], rows)]


def describe(artifact: Artifact | str | os.PathLike[str], max_modules: int = 40) -> str:
    """The summary text of an artifact (opened with a quick verify when given a path)."""
    a = artifact if isinstance(artifact, Artifact) else open_artifact(Path(artifact), verify="quick")
    lines = _manifest_section(a)
    sections = [(MODEL_YAML, _model_section), (REPORT_JSON, lambda x: _report_section(x, max_modules))]
    sections += [(TUNING_JSON, _tuning_section), (KERNELS_INDEX, _kernels_section)]
    for rel, section in sections:
        if not a.has(rel):
            continue
        try:
            lines += section(a)
        except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
            lines += ["", rel, f"  unreadable: {type(e).__name__}: {e}"]
    return "\n".join(lines) + "\n"


__all__ = ["describe", "human_bytes", "table"]
