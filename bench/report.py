"""The benchmark's results as one Markdown document (tables plus the notes that qualify them)."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cpu(phase: dict[str, Any], group: str) -> str:
    value = phase["cpu_ms_per_request"].get(group)
    return "-" if value is None else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def pair_table(floor: dict[str, Any], product: dict[str, Any], ratios: dict[str, Any]) -> list[str]:
    """The floor against the product, one database: rates, latencies, CPU by process group."""
    lines = [
        "| | floor | product | product/floor |",
        "|---|---:|---:|---:|",
        f"| requests/s | {floor['per_second']:.0f} | {product['per_second']:.0f} "
        f"| {_ratio(ratios['throughput'])} |",
        f"| median latency ms | {_ms(floor['p50_ms'])} | {_ms(product['p50_ms'])} "
        f"| {_ratio(ratios['median'])} |",
        f"| 99th percentile ms | {_ms(floor['p99_ms'])} | {_ms(product['p99_ms'])} "
        f"| {_ratio(ratios['p99'])} |",
        f"| max ms | {_ms(floor['max_ms'])} | {_ms(product['max_ms'])} | |",
        f"| errors (non-2xx, socket) | {floor['failed']} | {product['failed']} | |",
    ]
    groups = (("nginx", "nginx"), ("gunicorn", "gunicorn (master + workers)"),
              ("postgres", "PostgreSQL (backends + writers)"),
              ("total", "all of these"))  # fmt: skip
    for group, label in groups:
        if group not in ratios["cpu"]:
            continue
        lines.append(
            f"| CPU ms/request, {label} | {_cpu(floor, group)} | {_cpu(product, group)} "
            f"| {_ratio(ratios['cpu'][group])} |"
        )
    lines += [
        f"| CPU ms/request, wrk (load generator) | {_cpu(floor, 'wrk')} "
        f"| {_cpu(product, 'wrk')} | |",
        f"| CPU ms/request, anything else on the machine | {_cpu(floor, 'other')} "
        f"| {_cpu(product, 'other')} | |",
        f"| worker RSS after the run, MiB | {_rss(floor)} | {_rss(product)} | |",
        "",
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    floor, product, ratios = results["floor"], results["product"], results["ratios"]
    settings = results["settings"]
    lite = results["on_sqlite"]
    lines = [
        f"## Benchmark: {results['when']} (commit {results['commit']})",
        "",
        f"`{settings['command']}`: {settings['connections']} connections, "
        f"{settings['threads']} wrk threads, {settings['duration']} s per measured run "
        f"(after a {settings['warmup']} s warm-up), {settings['workers']} gunicorn workers, "
        f"TLS through nginx with the project's site file, PostgreSQL {results['postgres']}, "
        f"{results['machine']['cpus']} cores shared by everything.",
        "",
        "PostgreSQL:",
        "",
        *pair_table(floor, product, ratios),
        f"SQLite {results['sqlite']} (a file with the product's pragmas; its CPU is the workers'):",
        "",
        *pair_table(lite["floor"], lite["product"], lite["ratios"]),
    ]
    e2e = results.get("end_to_end")
    if e2e:
        s = e2e["steady"]
        lines += [
            f"End to end at {s['rate']:.0f} webhooks/s for {s['seconds']:.0f} s (signed, through "
            "nginx, from 10 addresses with the rate limit in place; until the local Bot API "
            "server received the sendMessage):",
            "",
            "| sent | acknowledged | messages received | missing | duplicates "
            "| median ms | p99 ms | max ms | worker RSS after, MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {s['sent']} | {s['acknowledged']} | {s['received']} | {s['missing']} "
            f"| {s['duplicates']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} "
            f"| {_rss(e2e)} |",
            "",
        ]
        b = e2e.get("burst")
        if b:
            lines += [
                f"Burst: {b['webhooks']} webhooks at once, {b['messages']} messages in "
                f"{b['seconds']} s ({b['per_second']}/s); busiest second "
                f"{b['busiest_one_second_window']} against TELEGRAM_RATE_PER_SECOND="
                f"{b['configured_limit_per_second']:.0f}.",
                "",
            ]
        g = e2e.get("generations")
        if g:
            lines += [
                f"Generations at {g['rate']:.0f} callbacks/s for {g['seconds']:.0f} s (signed, "
                f"{g['photos_per_album']} photos each, until the local Bot API server received "
                "the album, having fetched every photo's URL):",
                "",
                "| sent | acknowledged | albums received | missing | duplicates "
                "| median ms | p99 ms | max ms |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {g['sent']} | {g['acknowledged']} | {g['albums_received']} | {g['missing']} "
                f"| {g['duplicates']} | {_ms(g['p50_ms'])} | {_ms(g['p99_ms'])} "
                f"| {_ms(g['max_ms'])} |",
                "",
            ]
    lines += ["| target | value | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |"
              for t in results["targets"]]  # fmt: skip
    lines += ["", *[f"- {note}" for note in results["notes"]]]
    for kind, profile in results.get("profiles", {}).items():
        lines += ["", f"Profile of the product's workers on {kind} ({profile['samples']} py-spy "
                  "samples of on-CPU time, a separate run; raw stacks in "
                  f"{profile.get('raw', 'the results folder')}):", ""]  # fmt: skip
        sections = (
            ("by package (where the CPU was)", "by_package_percent"),
            ("our functions, inclusive", "our_functions_inclusive_percent"),
        )
        for title, key in sections:
            shares = ", ".join(f"{name} {share}%" for name, share in profile[key][:12])
            lines.append(f"- {title}: {shares}")
    return "\n".join(lines) + "\n"


def _rss(phase: dict[str, Any]) -> str:
    return ", ".join(f"{mib:.0f}" for mib in phase.get("worker_rss_mib", [])) or "-"
