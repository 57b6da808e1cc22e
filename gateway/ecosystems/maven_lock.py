"""Maven coordinates, one per line (``group:artifact:version``, or with packaging and
classifier: ``g:a:packaging[:classifier]:v``): each artifact and its pom from Maven
Central, their ``.sha1`` sidecars first so the gateway checks each fill against them."""

from __future__ import annotations

from pathlib import Path

from gateway.ecosystems.lockfiles import Item, LockfileError

CENTRAL = "https://repo1.maven.org/maven2"


def coordinates(text: str, path: Path) -> list[Item]:
    items = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(":")
        if len(parts) == 3:
            group, artifact, version = parts
            packaging, classifier = "jar", ""
        elif len(parts) == 4:
            group, artifact, packaging, version = parts
            classifier = ""
        elif len(parts) == 5:
            group, artifact, packaging, classifier, version = parts
        else:
            raise LockfileError(f"{path}: not group:artifact[:packaging[:classifier]]:version:"
                                f" {line!r}")
        base = f"{CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}"
        files = [f"{base}.pom"]
        if packaging != "pom":
            files.append(f"{base}{'-' + classifier if classifier else ''}.{packaging}")
        for url in files:
            items.append(Item(f"{line} {url.rsplit('.', 1)[1]} sha1", url + ".sha1", phase=0))
            items.append(Item(f"{line} {url.rsplit('.', 1)[1]}", url))
    return items
