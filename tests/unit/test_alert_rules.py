"""Every alert rule in deploy/chorus-alerts.yml, run by Prometheus's own `promtool test rules`
on series like the ones Chorus exports: each fires when it should and stays quiet when it
should not. Skips without promtool (`make promtool` extracts it from Debian's package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "chorus-alerts.yml"
SPEECH = 'route="/v1/audio/speech"'


def promtool() -> str | None:
    here = Path(sys.executable).parent / "promtool"  # where `make promtool` puts it
    return str(here) if here.exists() else shutil.which("promtool")


def buckets(name: str, counts: dict[str, str]) -> list[dict[str, str]]:
    """A histogram's bucket series: le -> promtool's expanding values."""
    return [{"series": f'{name}_bucket{{le="{le}"}}', "values": v} for le, v in counts.items()]


def requests(reason: str, per_min: int, route: str = SPEECH) -> dict[str, str]:
    return {
        "series": f'ray_chorus_requests_total{{{route}, reason="{reason}"}}',
        "values": f"0+{per_min}x60",
    }


# alert -> cases of (what happened, minute evaluated, fires?)
CASES: dict[str, list[tuple[list[dict[str, str]], int, bool]]] = {
    "ChorusOverloaded": [
        ([requests("overload", 10), requests("ok", 50)], 20, True),  # 17% refused
        ([requests("overload", 1), requests("ok", 50)], 20, False),  # 2%
        ([requests("overload", 10), requests("ok", 50)], 9, False),  # not for 10 minutes yet
    ],
    "ChorusSlowFirstAudio": [
        (
            buckets(
                "ray_chorus_time_to_first_audio_seconds",
                {"1": "0x60", "5": "0+1x60", "10": "0+20x60", "+Inf": "0+20x60"},
            ),
            20,
            True,
        ),
        (
            buckets(
                "ray_chorus_time_to_first_audio_seconds",
                {"1": "0+20x60", "5": "0+20x60", "10": "0+20x60", "+Inf": "0+20x60"},
            ),
            20,
            False,
        ),
    ],
    "ChorusSynthesisFailures": [
        # failed requests alone, before any stream ever failed (no stream series at all)
        ([requests("ok", 50), requests("synthesis_failed", 1)], 10, True),
        # a stream failure alone
        (
            [
                requests("ok", 50),
                {
                    "series": 'ray_chorus_stream_failures_total{reason="internal"}',
                    "values": "0+1x60",
                },
            ],
            10,
            True,
        ),
        ([requests("ok", 50), requests("replica_unavailable", 1)], 10, True),
        ([requests("ok", 50), requests("bad_input", 5)], 10, False),  # the client's fault
    ],
    "ChorusDeadlines": [
        ([requests("deadline", 1), requests("ok", 50)], 15, True),
        ([requests("ok", 50)], 15, False),
    ],
    "ChorusSlowerThanRealTime": [
        (
            buckets(
                "ray_chorus_real_time_factor",
                {"0.1": "0x60", "0.5": "0x60", "1": "0+30x60", "+Inf": "0+30x60"},
            ),
            30,
            True,
        ),
        (
            buckets(
                "ray_chorus_real_time_factor",
                {"0.1": "0+30x60", "0.5": "0+30x60", "1": "0+30x60", "+Inf": "0+30x60"},
            ),
            30,
            False,
        ),
    ],
    "ChorusNoHealthyReplica": [
        (
            [
                {
                    "series": 'ray_serve_deployment_replica_healthy{application="chorus", '
                    'deployment="Synthesizer", replica="a"}',
                    "values": "1x5 0x20",
                }
            ],
            10,
            True,
        ),
        (
            [
                {
                    "series": 'ray_serve_deployment_replica_healthy{application="chorus", '
                    'deployment="Synthesizer", replica="a"}',
                    "values": "1x5 0x20",
                },
                {
                    "series": 'ray_serve_deployment_replica_healthy{application="chorus", '
                    'deployment="Synthesizer", replica="b"}',
                    "values": "1x30",
                },
            ],
            10,
            False,
        ),
    ],
}


def rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def expected(rule: dict, fires: bool) -> list[dict]:
    if not fires:
        return []
    labels = dict(rule.get("labels", {}))
    if "by (deployment)" in rule["expr"]:
        labels["deployment"] = "Synthesizer"
    return [{"exp_labels": labels, "exp_annotations": rule.get("annotations", {})}]


def test_every_alert_rule_has_cases() -> None:
    assert set(CASES) == set(rules()), "an alert rule without a promtool case, or the reverse"


@pytest.mark.skipif(promtool() is None, reason="promtool not installed (make promtool)")
def test_promtool_checks_the_rules_and_every_alert_fires_only_when_it_should(
    tmp_path: Path,
) -> None:
    tool = promtool()
    assert tool
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    found = rules()
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {
                    "eval_time": f"{minute}m",
                    "alertname": name,
                    "exp_alerts": expected(found[name], fires),
                }
            ],
        }
        for name, cases in CASES.items()
        for series, minute, fires in cases
    ]
    spec = tmp_path / "chorus-alerts.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "tests": tests}))
    run = subprocess.run(
        [tool, "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
