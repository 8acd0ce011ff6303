"""The comparison's numbers: one phase's answers summarised, the targets checked, the plots."""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from load_tests.common import median, pct

REFUSALS = (429, 503)  # explicit "come back later", with Retry-After


@dataclass
class Answer:
    """What one request got: an HTTP status, or "timeout" (the client gave up) / "error"."""

    status: int | str
    latency_s: float
    ttfa_s: float | None = None  # first audio byte
    audio_s: float = 0.0
    retry_after_s: float = 0.0  # from a refusal's Retry-After
    sentences: int | None = None  # Chorus's X-Chorus-Sentences: how many the audio holds
    detail: str = ""  # the start of a refusal's or an error's body


def wav_seconds(data: bytes) -> float:
    """Seconds of 16-bit mono audio in a WAV file, streamed (unknown length) or not."""
    rate = None
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if tag == b"fmt ":
            rate = struct.unpack("<I", data[pos + 12 : pos + 16])[0]
        elif tag == b"data":
            if rate is None:
                break
            return (len(data) - pos - 8) // 2 / rate
        pos += 8 + size
    raise ValueError("not a WAV file with fmt and data chunks")


def spread(values: list[float], scale: float = 1.0, digits: int = 3) -> dict:
    """p50, p95 and p99 of `values` times `scale`; None where there are no values."""
    if not values:
        return dict.fromkeys(("p50", "p95", "p99"))
    return {
        "p50": round(median(values) * scale, digits),
        "p95": round(pct(values, 95) * scale, digits),
        "p99": round(pct(values, 99) * scale, digits),
    }


def summarize(answers: list[Answer], elapsed_s: float) -> dict:
    """One phase: throughput over its whole span (first request sent to last answer)."""
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status in REFUSALS]
    failed = [a for a in answers if a.status != 200 and a.status not in REFUSALS]
    return {
        "sent": len(answers),
        "ok": len(ok),
        "refused": len(refused),
        "failed": len(failed),
        "statuses": dict(Counter(str(a.status) for a in answers)),
        "elapsed_s": round(elapsed_s, 2),
        "ok_per_s": round(len(ok) / elapsed_s, 3),
        "audio_s_per_s": round(sum(a.audio_s for a in ok) / elapsed_s, 2),
        "latency_s": spread([a.latency_s for a in ok]),
        "latency_mean_s": round(sum(a.latency_s for a in ok) / len(ok), 4) if ok else None,
        "ttfa_s": spread([a.ttfa_s for a in ok if a.ttfa_s is not None]),
        "refused_share": round(len(refused) / max(1, len(answers)), 3),
        "refusal_ms": spread([a.latency_s for a in refused], 1000, 1),
        "failed_share": round(len(failed) / max(1, len(answers)), 3),
    }


def check_targets(report: dict) -> list[dict]:
    """Issue 7's targets, each with the measured value and whether it was reached."""
    servers = report["servers"]
    chorus = servers.get("chorus")
    if not chorus:
        return []
    closed, loads = chorus["closed"], chorus["open"]
    out = []

    def target(name: str, value: float, goal: str, reached: bool) -> None:
        out.append({"target": name, "measured": value, "goal": goal, "reached": reached})

    direct = report.get("direct", {}).get("audio_s_per_s")
    if direct:
        share = closed["audio_s_per_s"] / direct
        target(
            "served / direct-engine throughput at saturation",
            round(share, 3),
            ">= 0.90",
            share >= 0.9,
        )
    top = max(loads, key=float, default=None)
    if top and float(top) >= 4:
        heavy = loads[top]
        share = heavy["audio_s_per_s"] / closed["audio_s_per_s"]
        target(
            f"accepted throughput at {top}x / capacity", round(share, 3), ">= 0.90", share >= 0.9
        )
        p99 = heavy["refusal_ms"]["p99"]
        target(f"refusal p99 at {top}x (ms)", p99, "<= 10", p99 <= 10)
    if "0.7" in loads:
        ratio = loads["0.7"]["latency_s"]["p99"] / chorus["unloaded"]["latency_s"]["p99"]
        target("p99 latency at 0.7x / unloaded p99", round(ratio, 2), "<= 3", ratio <= 3)
    for name, peer in servers.items():
        if name.startswith("chorus"):  # Chorus itself, behind either front door
            continue
        for key, better in (("latency_s", "lower"), ("audio_s_per_s", "higher")):
            mine, theirs = closed[key], peer["closed"][key]
            if key == "latency_s":
                mine, theirs = mine["p99"], theirs["p99"]
            reached = mine < theirs if better == "lower" else mine > theirs
            what = "p99 latency (s)" if key == "latency_s" else "successful audio-s/s"
            target(
                f"{what} vs {peer['label']}, {closed['clients']} clients",
                [mine, theirs],
                better,
                reached,
            )
    return out


def plot(report: dict, folder: Path, name: str = "compare") -> list[Path]:
    """Two PNGs: latency and throughput against offered load, and the closed-loop bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = report["servers"]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in servers.values():
        loads = sorted(s["open"], key=float)
        x = [float(k) for k in loads]
        lat.plot(
            x, [s["open"][k]["latency_s"]["p99"] for k in loads], "o-", label=f"{s['label']} p99"
        )
        lat.plot(
            x,
            [s["open"][k]["ttfa_s"]["p50"] for k in loads],
            "x--",
            label=f"{s['label']} first audio p50",
        )
        thr.plot(x, [s["open"][k]["audio_s_per_s"] for k in loads], "o-", label=s["label"])
    lat.set(xlabel="offered load (x its own capacity)", ylabel="seconds", yscale="log")
    lat.set_title("Latency of successful requests")
    thr.set(xlabel="offered load (x its own capacity)", ylabel="audio seconds per second")
    thr.set_title("Successful throughput")
    if report.get("direct"):
        thr.axhline(report["direct"]["audio_s_per_s"], color="grey", ls=":", label="engine alone")
    for ax in (lat, thr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [folder / f"{name}_load.png"]
    fig.savefig(paths[0], dpi=110)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    names = [s["label"] for s in servers.values()]
    closed = [s["closed"] for s in servers.values()]
    clients = closed[0]["clients"] if closed else 0
    panels = (
        ("successful audio-s/s", [c["audio_s_per_s"] for c in closed]),
        ("p99 latency (s)", [c["latency_s"]["p99"] for c in closed]),
        ("first audio p50 (s)", [c["ttfa_s"]["p50"] for c in closed]),
    )
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(names, values, color=["#2a7", "#c84", "#58c"][: len(names)])
        ax.set_title(f"{title}, {clients} clients", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    paths.append(folder / f"{name}_clients.png")
    fig.savefig(paths[1], dpi=110)
    plt.close("all")
    return paths


def num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(report: dict) -> str:
    """The README's table, in Markdown."""
    columns = "server, phase, sent, ok, refused, failed, audio-s/s, p50, p95, p99, "
    columns += "first audio p50, refusal p50 / p99"
    rows = ["| " + " | ".join(columns.split(", ")) + " |", "|---" * 12 + "|"]
    for s in report["servers"].values():
        phases = [("unloaded", s["unloaded"]), (f"{s['closed']['clients']} clients", s["closed"])]
        phases += [
            (f"{k}x Poisson", v) for k, v in sorted(s["open"].items(), key=lambda kv: float(kv[0]))
        ]
        for phase, p in phases:
            lat, ref = p["latency_s"], p["refusal_ms"]
            refusal = f"{ref['p50']:.0f} / {ref['p99']:.0f} ms" if p["refused"] else "–"
            rows.append(
                f"| {s['label']} | {phase} | {p['sent']} | {p['ok']} | {p['refused']} "
                f"| {p['failed']} | {p['audio_s_per_s']:.1f} "
                f"| {num(lat['p50'])} | {num(lat['p95'])} | {num(lat['p99'])} "
                f"| {num(p['ttfa_s']['p50'])} | {refusal} |"
            )
    return "\n".join(rows)
