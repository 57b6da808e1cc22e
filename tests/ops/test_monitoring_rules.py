"""The Prometheus rules shipped with the package: printed by ``cachegate monitoring
rules``, valid for ``promtool check rules``, and unit-tested with ``promtool test rules``:
each alert fires on synthetic series and resolves when they calm down (and stays quiet
where it should).  Also the width of ``cachegate stats``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.ops.cli import format_stats, main, shorten_middle
from gateway.ops.monitoring import rules_text
from tests.clients import need

RULES = Path(__file__).resolve().parents[2] / "gateway" / "ops" / "monitoring" / "rules.yml"
TARGET = {"job": "cachegate", "instance": "buildhost:3129"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    need(shutil.which("promtool"), "promtool not installed (Debian package prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def annotations() -> dict[str, dict[str, str]]:
    """Each alert's annotation templates, read from rules.yml (a double-quoted summary
    and a folded ``>-`` description: the only forms the file uses)."""
    out: dict[str, dict[str, str]] = {}
    alert, folding, indent = None, None, 0
    for line in RULES.read_text().splitlines():
        stripped = line.strip()
        depth = len(line) - len(line.lstrip())
        if folding is not None:
            if stripped and depth > indent:
                out[alert][folding] = (out[alert][folding] + " " + stripped).strip()
                continue
            folding = None
        if m := re.match(r"- alert: (\w+)", stripped):
            alert = m.group(1)
            out[alert] = {}
        elif alert and (m := re.match(r'(summary|description): "(.*)"$', stripped)):
            out[alert][m.group(1)] = m.group(2).replace('\\"', '"')
        elif alert and (m := re.match(r"(summary|description): >-$", stripped)):
            folding, indent, out[alert][m.group(1)] = m.group(1), depth, ""
    return out


def expected(alert: str, severity: str, **labels: str) -> dict:
    """One ``exp_alerts`` entry: labels, and the annotations with ``$labels`` filled in."""
    every = {**TARGET, **labels, "severity": severity}
    texts = {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: every[m.group(1)], v)
             for k, v in annotations()[alert].items()}
    return {"exp_labels": every, "exp_annotations": texts}


def series(name: str, values: str, **labels: str) -> dict:
    body = ", ".join(f'{k}="{v}"' for k, v in {**TARGET, **labels}.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def case(alert: str, inputs: list[dict], quiet: list[str], firing: dict[str, dict]) -> dict:
    """A promtool test: ``alert`` is absent at each ``quiet`` time, as given at each
    ``firing`` time."""
    checks = [{"eval_time": t, "alertname": alert, "exp_alerts": []} for t in quiet]
    checks += [{"eval_time": t, "alertname": alert, "exp_alerts": [want]}
               for t, want in firing.items()]
    return {"interval": "1m", "input_series": inputs, "alert_rule_test": checks}


def unit_tests() -> dict:
    pypi, debian = {"ecosystem": "pypi"}, {"ecosystem": "debian"}
    tests = [
        case("CachegateDown", [series("up", "1 1 0 0 0 0 0 1 1 1 1")],
             quiet=["1m", "3m", "9m"], firing={"5m": expected("CachegateDown", "critical")}),
        case("CachegateUpstreamFailing", [
            series("cachegate_upstream_requests_total", "0+10x40", **pypi),
            series("cachegate_upstream_errors_total", "0x5 5+5x14 75x20", kind="connect", **pypi),
            series("cachegate_upstream_errors_total", "0x40", kind="5xx", **pypi),
            # a trickle: 1 request in 5 minutes, failing: too few to page anyone
            series("cachegate_upstream_requests_total", "0x5 1x35", **debian),
            series("cachegate_upstream_errors_total", "0x5 1x35", kind="timeout", **debian)],
             quiet=["4m", "8m", "35m"],
             firing={"15m": expected("CachegateUpstreamFailing", "warning", **pypi)}),
        case("CachegateServingStale", [
            series("cachegate_stale_responses_total", "0x5 1 2 3 3x25", **debian),
            series("cachegate_stale_responses_total", "0x30", **pypi)],
             quiet=["4m", "25m"],
             firing={"8m": expected("CachegateServingStale", "warning", **debian)}),
        case("CachegateCacheFullChurning", [
            series("cachegate_cache_bytes", "96x90"),
            series("cachegate_cache_limit_bytes", "100x90"),
            series("cachegate_cache_objects", "1000x90", **debian),
            series("cachegate_cache_evictions_total", "0+10x40 400x50")],
             quiet=["10m", "85m"],
             firing={"30m": expected("CachegateCacheFullChurning", "warning")}),
        case("CachegateIntegrityFailures", [
            series("cachegate_integrity_failures_total", "0x5 1x25", stage="download", **pypi),
            series("cachegate_integrity_failures_total", "0x30", stage="stored", **pypi)],
             quiet=["4m", "25m"],
             firing={"7m": expected("CachegateIntegrityFailures", "critical", stage="download",
                                    **pypi)}),
        case("CachegateClientsRejectCA", [
            series("cachegate_passthrough_rejections_total", "0x5 2 4 4x25"),
            series("cachegate_passthrough_tunnels_total", "0x5 1 3 3x25")],
             quiet=["4m", "25m"], firing={"8m": expected("CachegateClientsRejectCA", "info")}),
        {"interval": "1m", "input_series": [
            series("cachegate_requests_total", "0+6x10", label="HIT", **pypi),
            series("cachegate_requests_total", "0+2x10", label="MISS", **pypi),
            series("cachegate_upstream_requests_total", "0+4x10", **pypi),
            series("cachegate_upstream_errors_total", "0+1x10", kind="reset", **pypi)],
         "promql_expr_test": [
            {"expr": "cachegate:hit_ratio:rate5m", "eval_time": "10m",
             "exp_samples": [{"labels": 'cachegate:hit_ratio:rate5m{ecosystem="pypi",'
                                        'instance="buildhost:3129",job="cachegate"}',
                              "value": 0.75}]},
            {"expr": "cachegate:upstream_error_ratio:rate5m", "eval_time": "10m",
             "exp_samples": [{"labels": 'cachegate:upstream_error_ratio:rate5m{ecosystem="pypi",'
                                        'instance="buildhost:3129",job="cachegate"}',
                              "value": 0.25}]}]},
    ]
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}


def test_the_command_prints_the_shipped_rules(capsys):
    assert main(["monitoring", "rules"]) == 0
    assert capsys.readouterr().out == RULES.read_text() == rules_text()


def test_the_scrape_job_names_the_admin_address(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\nadmin = "127.0.0.1:4129"\n')
    assert main(["--config", str(config), "monitoring", "scrape"]) == 0
    out = capsys.readouterr().out
    assert "job_name: cachegate" in out and '"127.0.0.1:4129"' in out


def test_promtool_accepts_the_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout


def test_every_alert_is_unit_tested():
    tested = {c["alertname"] for t in unit_tests()["tests"] for c in t.get("alert_rule_test", [])}
    assert tested == set(annotations()) and len(tested) == 6


def test_alerts_fire_and_resolve_on_synthetic_series(tmp_path):
    spec = tmp_path / "rules_test.yml"
    spec.write_text(json.dumps(unit_tests(), indent=1))  # JSON is YAML
    done = promtool("test", "rules", str(spec))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_can_fail(tmp_path):
    """A wrong expectation (CachegateDown quiet while the target is down) fails."""
    tests = unit_tests()
    tests["tests"] = [case("CachegateDown", [series("up", "0x10")], quiet=["5m"], firing={})]
    spec = tmp_path / "rules_test.yml"
    spec.write_text(json.dumps(tests))
    done = promtool("test", "rules", str(spec))
    assert done.returncode != 0 and "CachegateDown" in done.stdout + done.stderr


def stats_doc(urls: list[str]) -> dict:
    tally = {"requests": {"HIT": 3}, "hit_ratio": 1.0, "bytes_from_cache": 3 * 2**20,
             "bytes_from_upstream": 0}
    return {"uptime": 60.0, "gateway": {"total": tally, "ecosystems": {"pypi": tally},
                                        "clients": {"172.17.0.2": tally}},
            "cache": {"objects": 2, "bytes": 5 * 2**20, "limit": 2**30,
                      "ecosystems": {"pypi": {"objects": 2, "bytes": 4 * 2**20}}},
            "downloads": {"active": 0},
            "dns": {"queries": 9, "redirected": 5, "forwarded": 3, "cache_hits": 1},
            "top": [{"url": u, "requests": 12345, "bytes": 3 * 2**30} for u in urls]}


LONG = ("files.pythonhosted.org/packages/3f/a1/" + "0123456789abcdef" * 4
        + "/a-rather-long-distribution-name-1.0.0-py3-none-any.whl")


def test_stats_fit_100_columns_and_wide_shows_urls_whole():
    doc = stats_doc([LONG, "deb.debian.org/debian/pool/main/c/curl/curl_8.deb"])
    text = format_stats(doc)
    assert max(map(len, text.splitlines())) <= 100, text
    shortened = next(line for line in text.splitlines() if "..." in line)
    assert shortened.startswith("files.pythonhosted.org/") and ".whl" in shortened
    assert "deb.debian.org/debian/pool/main/c/curl/curl_8.deb" in text  # short: whole
    assert "4.0 MiB stored (bodies)" in text
    wide = format_stats(doc, None)
    assert LONG in wide and max(map(len, wide.splitlines())) > 100


@pytest.mark.parametrize("width", [5, 11, 40])
def test_shorten_middle_keeps_both_ends_within_the_width(width):
    short = shorten_middle(LONG, width)
    assert len(short) == width and "..." in short
    assert LONG.startswith(short.split("...")[0]) and LONG.endswith(short.split("...")[1])
